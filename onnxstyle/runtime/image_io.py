"""Image files: decoding robustly, resizing, and writing atomically (PNG with settings).

Everything else in the runtime works on float32 RGB arrays in [0, 1]; this module is
the only one that touches image files.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError, OutputError

WRITABLE = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sniff_truncated(data: bytes) -> bool:
    """JPEG without its end marker or PNG without IEND: the decoder would pad with grey."""
    if data[:3] == b"\xff\xd8\xff":
        return b"\xff\xd9" not in data[-4096:]
    if data[:8] == PNG_SIGNATURE:
        return b"IEND" not in data[-64:]
    return False


def _reduced_flag(data: bytes, max_side: int | None) -> int:
    """For a JPEG far larger than needed, let libjpeg decode at 1/2, 1/4 or 1/8 scale."""
    if max_side is None or data[:3] != b"\xff\xd8\xff":
        return 0
    size = _jpeg_size(data)
    if size is None:
        return 0
    longest = max(size)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if longest // factor >= max_side:
            return flag
    return 0


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return h, w
        i += 2 + length
    return None


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def load_image(
    path: str | Path, max_side: int | None = None, reduce_to: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB float32 HxWx3 in [0,1], alpha HxW in [0,1] or None), oriented as a viewer shows it.

    ``max_side`` resizes so that the longest side equals it (area interpolation when
    shrinking, cubic when enlarging). ``reduce_to`` only lets a large JPEG be decoded at
    1/2, 1/4 or 1/8 scale while staying at least that size, without resizing further.
    """
    path = Path(path)
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
    if _sniff_truncated(data):
        raise ImageError(f"{path}: image data is truncated")
    buf = np.frombuffer(data, np.uint8)
    raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ImageError(f"{path}: not an image onnxstyle can read (PNG, JPEG, WebP, BMP, TIFF)")
    alpha = None
    if raw.ndim == 3 and raw.shape[2] == 4:
        # PNG/WebP with alpha carry no EXIF orientation in practice; keep their pixels as stored.
        bgr = raw[:, :, :3]
        alpha = _to_float(raw[:, :, 3])
    else:
        # IMREAD_COLOR applies the EXIF orientation and converts grey, palette and CMYK to BGR.
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | _reduced_flag(data, max_side or reduce_to)
        bgr = cv2.imdecode(buf, flags)
        if bgr is None:
            raise ImageError(f"{path}: not an image onnxstyle can read")
    rgb = _to_float(bgr)[:, :, ::-1]
    if max_side is not None:
        rgb = resize_longest(rgb, max_side)
        if alpha is not None:
            alpha = resize_to(alpha, rgb.shape[0], rgb.shape[1])
    return np.ascontiguousarray(rgb), alpha


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
