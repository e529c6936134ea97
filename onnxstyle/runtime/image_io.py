"""Image files: decoding robustly, resizing, and writing atomically (PNG with settings).

Everything else in the runtime works on float32 RGB arrays in [0, 1]; this module is
the only one that touches image files.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError, OutputError

WRITABLE = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# Pillow's convention for decompression bombs: it warns above 89.5 M pixels and refuses
# above twice that. A header is read before anything is decoded, and above this limit the
# file is refused with the limit in the message (raise it with --max-pixels).
DEFAULT_MAX_PIXELS = 2 * 89_478_485
_PIL_LOCK = threading.Lock()
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding a pixel."""

    format: str  # PNG, JPEG, WEBP, ...
    width: int  # as stored (before EXIF orientation)
    height: int
    alpha: bool
    orientation: int = 1  # EXIF: 5-8 turn the image a quarter

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def oriented(self) -> tuple[int, int]:
        """(height, width) as a viewer shows it (and as load_image returns it)."""
        turned = self.orientation in (5, 6, 7, 8) and not self.alpha
        return (self.width, self.height) if turned else (self.height, self.width)


def read_header(data: bytes, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Format, size and alpha from the header; refuses a bomb before a pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _PIL_LOCK:
            # Our own limit is checked below, with a message of ours; Pillow's would fire first.
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image onnxstyle can read (PNG, JPEG, WebP, BMP, TIFF)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: unreadable image header ({e})") from None
    w, h = im.size
    alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    try:
        orientation = int(im.getexif().get(0x0112, 1)) if im.format == "JPEG" else 1
    except Exception:  # a damaged EXIF block: the decoder ignores it too
        orientation = 1
    header = ImageHeader(str(im.format or "?"), w, h, alpha, orientation)
    im.close()
    if header.pixels > max_pixels:
        raise ImageError(
            f"{path}: {w}x{h} is {header.pixels / 1e6:.0f} M pixels, over the limit of {max_pixels / 1e6:.0f} M "
            f"(a decompression bomb?); raise the limit with --max-pixels if the image is genuine"
        )
    return header


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG whose scan data reaches its end marker. Trailing bytes after it (the video of a
    motion photo, padding) are fine; a file cut short would decode padded with grey."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return True
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            # The first scan: the entropy-coded data holds no 0xFFD9 (0xFF is stuffed), so the
            # image is whole if an end marker follows (embedded thumbnails lie before the scan).
            return data.find(b"\xff\xd9", i + 2 + length) >= 0
        i += 2 + length
    return False


def _png_complete(data: bytes) -> bool:
    """Walk the PNG chunks: every chunk whole, up to IEND."""
    i = 8
    while i + 8 <= len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        if data[i + 4 : i + 8] == b"IEND":
            return True
        i += 12 + n
    return False


def _complete(data: bytes, fmt: str) -> bool:
    if fmt == "JPEG":
        return _jpeg_complete(data)
    if fmt == "PNG":
        return _png_complete(data)
    return True


def _reduced_flag(header: ImageHeader, target: int | None) -> int:
    """For a JPEG far larger than needed, let libjpeg decode at 1/2, 1/4 or 1/8 scale."""
    if target is None or header.format != "JPEG":
        return 0
    longest = max(header.width, header.height)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if longest // factor >= target:
            return flag
    return 0


def _unit_scale(img: np.ndarray) -> float:
    return 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0


def _to_float(img: np.ndarray) -> np.ndarray:
    return np.clip(img.astype(np.float32) / _unit_scale(img), 0.0, 1.0)


def _resize_int(img: np.ndarray, side: int | None) -> np.ndarray:
    """Resize while still 8/16-bit, so no float copy at the input's full size ever exists."""
    if side is None:
        return img
    h, w = fit_longest(img.shape[0], img.shape[1], side)
    if (h, w) == img.shape[:2]:
        return img
    interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(img, (w, h), interpolation=interp)


def load_image(
    path: str | Path, max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB float32 HxWx3 in [0,1], alpha HxW in [0,1] or None), oriented as a viewer shows it.

    The header is read first (a bomb is refused before decoding), the file is decoded once
    (a large JPEG at 1/2, 1/4 or 1/8 scale by libjpeg when that still covers ``max_side``),
    resized to ``max_side`` (longest side) while still 8/16-bit, and only then made float.
    """
    path = Path(path)
    return decode_image(read_bytes(path), path, max_side, max_pixels)


def decode_image(
    data: bytes, name: str | Path = "image", max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`load_image` on bytes already in memory (an upload, an object from a store);
    ``name`` only labels the errors."""
    path = Path(name)
    if not data:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    header = read_header(data, path, max_pixels)
    if not _complete(data, header.format):
        raise ImageError(f"{path}: image data is truncated")
    buf = np.frombuffer(data, np.uint8)
    if header.alpha:
        # PNG/WebP with alpha carry no EXIF orientation in practice; keep their pixels as stored.
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    else:
        # IMREAD_COLOR applies the EXIF orientation and converts grey, palette and CMYK to BGR.
        raw = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | _reduced_flag(header, max_side))
    if raw is None:
        raise ImageError(f"{path}: not an image onnxstyle can read")
    if raw.ndim == 2:
        raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
    elif raw.shape[2] == 2:  # grey + alpha
        raw = np.dstack([cv2.cvtColor(raw[:, :, :1], cv2.COLOR_GRAY2BGR), raw[:, :, 1]])
    raw = _resize_int(raw, max_side)
    alpha = _to_float(raw[:, :, 3]) if raw.shape[2] == 4 else None
    rgb = _to_float(raw[:, :, 2::-1])
    return np.ascontiguousarray(rgb), alpha


def probe_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """The header of an image file (size, format, alpha); a bomb is refused here."""
    path = Path(path)
    return read_header(read_bytes(path), path, max_pixels)


def read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror})") from None
    if not data:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    return data


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    if img.shape[0] == height and img.shape[1] == width:
        return img
    shrinking = height * width < img.shape[0] * img.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=interp)
    return np.clip(out, 0.0, 1.0)


def fit_longest(height: int, width: int, side: int) -> tuple[int, int]:
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_size(height: int, width: int, size: int, fit: str = "longest") -> tuple[int, int]:
    """(h, w) for --size measured on the longest side, or on the height."""
    if fit == "height":
        return size, max(1, round(width * size / height))
    return fit_longest(height, width, size)


def resize_longest(img: np.ndarray, side: int) -> np.ndarray:
    h, w = fit_longest(img.shape[0], img.shape[1], side)
    return resize_to(img, h, w)


def to_nchw(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)


def from_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[0].transpose(1, 2, 0))


def check_output_path(path: str | Path, inputs: list[Path] | tuple[Path, ...] = ()) -> Path:
    """Refuse an output that cannot be written, before any minutes are spent computing it."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in WRITABLE:
        raise OutputError(f"{path}: unknown output format {ext or '(none)'}; use .png, .jpg or .webp")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: folder {folder} is not writable")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder")
    for src in inputs:
        try:
            if path.resolve() == Path(src).resolve():
                raise OutputError(f"{path}: is also an input; writing it would destroy the input")
        except OSError:
            continue
    return path


def _png_text_chunk(key: str, value: str) -> bytes:
    body = key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace")
    return struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)


def add_png_text(png: bytes, text: dict[str, str]) -> bytes:
    """Insert tEXt chunks right after IHDR (opencv cannot write them itself)."""
    assert png[:8] == PNG_SIGNATURE
    ihdr_len = struct.unpack(">I", png[8:12])[0]
    cut = 8 + 12 + ihdr_len
    chunks = b"".join(_png_text_chunk(k, v) for k, v in text.items())
    return png[:cut] + chunks + png[cut:]


def read_png_text(path: str | Path) -> dict[str, str]:
    data = Path(path).read_bytes()
    out: dict[str, str] = {}
    i = 8
    while i + 8 <= len(data):
        n = struct.unpack(">I", data[i : i + 4])[0]
        kind = data[i + 4 : i + 8]
        if kind == b"tEXt":
            key, _, val = data[i + 8 : i + 8 + n].partition(b"\x00")
            out[key.decode("latin-1")] = val.decode("latin-1")
        if kind == b"IEND":
            break
        i += 12 + n
    return out


def encode_image(rgb: np.ndarray, ext: str, alpha: np.ndarray | None = None, text: dict[str, str] | None = None) -> bytes:
    ext = ext.lower()
    if ext not in WRITABLE:
        raise OutputError(f"unknown output format {ext}; use .png, .jpg or .webp")
    if not np.isfinite(rgb).all():
        raise OutputError("refusing to write an image with NaN or Inf pixels")
    bgr = np.round(np.clip(rgb[:, :, ::-1], 0, 1) * 255).astype(np.uint8)
    if alpha is not None and ext in (".png", ".webp"):
        a = np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8)
        bgr = np.dstack([bgr, a])
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 95]
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise OutputError(f"opencv could not encode a {ext} image")
    data = buf.tobytes()
    if ext == ".png" and text:
        data = add_png_text(data, text)
    return data


def write_atomic(path: str | Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old file or the new, whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_image(
    path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None, text: dict[str, str] | None = None
) -> None:
    path = Path(path)
    try:
        write_atomic(path, encode_image(rgb, path.suffix, alpha, text))
    except OSError as e:
        raise OutputError(f"{path}: cannot be written ({e.strerror})") from None
