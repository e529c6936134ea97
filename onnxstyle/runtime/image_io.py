"""Image files: decoding robustly, resizing, and writing atomically (PNG with settings).

Everything else in the runtime works on float32 RGB arrays in [0, 1]; this module is
the only one that touches image files, and :func:`resize_to` is the one resizer. Pillow
does all of it (opencv, 150 MB, is only in the video extra, for optical flow).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from ..errors import ImageError, OnnxStyleError, OutputError, engine_message

try:  # Pillow's colour management (LittleCMS); without it embedded profiles are ignored
    from PIL import ImageCms
except ImportError:  # pragma: no cover - Pillow built without lcms
    ImageCms = None  # type: ignore[assignment]

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
    orientation: int = 1  # EXIF (any format but TIFF, which Pillow turns): 5-8 turn it a quarter

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def oriented(self) -> tuple[int, int]:
        """(height, width) as a viewer shows it (and as load_image returns it)."""
        turned = self.orientation in (5, 6, 7, 8)
        return (self.width, self.height) if turned else (self.height, self.width)


def _full_size(header: ImageHeader, decoded: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the picture at full resolution: the header's, where the decode is that
    picture (turned as the header says; a reduced decode only scaled it), else the decode's."""
    h, w = header.oriented
    dh, dw = decoded
    return (h, w) if abs(h * dw - w * dh) <= max(h, w) * max(dh, dw) * 0.02 else (dh, dw)


# The formats Pillow may open. An allow-list, not everything Pillow registers: EPS would run
# Ghostscript on the file, and TGA, ICO and the scientific formats have no magic number, so
# random bytes could be taken for one of them.
# (JPEG's plugin also opens MPO, a phone's JPEG with a second picture after the first.)
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "AVIF", "JPEG2000")
_READABLE = "PNG, JPEG, WebP, GIF, BMP, TIFF, PPM, AVIF, JPEG 2000"


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy open (header only) without its own bomb check: ours, with a message of
    ours and the --max-pixels limit, is applied to the header; Pillow's would fire first."""
    with _PIL_LOCK:
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            Image.init()  # registers the plugins; open() refuses a format name it does not know
            return Image.open(io.BytesIO(data), formats=[f for f in _FORMATS if f in Image.OPEN])
        finally:
            Image.MAX_IMAGE_PIXELS = old


class _QuietDecoders:
    """Drops Pillow's warnings ("Corrupt EXIF data", "Truncated File Read", bomb warnings)
    and its log records (TiffImagePlugin logs "More samples per pixel than can be decoded"
    at ERROR, which Python's last-resort handler prints to stderr when no logging is set
    up) while images are decoded: a file is either read or refused with one line of ours.

    Both are process-wide state and decodes run in the service's thread pool, so nested or
    concurrent decodes share one window, opened by the first and closed by the last (a
    count under a lock); only warnings issued from Pillow's modules (and this one on their
    behalf) and the "PIL" loggers are silenced meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._ctx: warnings.catch_warnings | None = None
        self._level = logging.NOTSET

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                ctx = warnings.catch_warnings()
                ctx.__enter__()
                warnings.filterwarnings("ignore", module=r"(PIL|onnxstyle\.runtime\.image_io)(\.|$)")
                warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
                self._ctx = ctx
                self._level = _PIL_LOGGER.level
                _PIL_LOGGER.setLevel(logging.CRITICAL + 1)  # its plugins' loggers inherit it
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._ctx is not None:
                self._ctx.__exit__(None, None, None)
                self._ctx = None
                _PIL_LOGGER.setLevel(self._level)


_PIL_LOGGER = logging.getLogger("PIL")
_QUIET = _QuietDecoders()


def _silence_libtiff() -> bool:
    """Unset libtiff's default error and warning handlers, which print to fd 2 from C
    ("JPEGLib: Bogus Huffman table definition.", "LZWDecode: ...") past Python's sys.stderr:
    a damaged compressed TIFF would print lines besides our one. Pillow still sees the
    failure (the decoder returns an error), only the printing stops. The library is found
    among the process's mappings (Linux: Pillow's bundled copy or the system's), loaded
    once by Pillow already; elsewhere nothing is done and libtiff may still print.
    Process-wide and thread-safe (a pointer set once); nothing else here relies on it."""
    try:
        import ctypes

        from PIL import _imaging  # noqa: F401  (maps libtiff into the process)

        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line and "/" in line}
        for path in paths:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.restype = lib.TIFFSetWarningHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.argtypes = lib.TIFFSetWarningHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler(None)
            lib.TIFFSetWarningHandler(None)
        return bool(paths)
    except (OSError, AttributeError, ImportError):
        return False


_LIBTIFF_SILENT = _silence_libtiff()


@contextlib.contextmanager
def _boundary(path: Path, what: str = "not an image onnxstyle can read") -> Iterator[None]:
    """Whatever a decoder raises becomes one ImageError line. Broad on purpose: Pillow's
    plugins raise OSError, ValueError, SyntaxError, struct.error, zlib.error, EOFError,
    IndexError, KeyError, TypeError... on damaged files. KeyboardInterrupt is not an
    Exception and passes through, as do our own errors."""
    try:
        with _QUIET:
            yield
    except OnnxStyleError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image onnxstyle can read ({_READABLE})") from None
    except MemoryError:
        # A header within --max-pixels that still does not fit (or lies about its pixel size).
        raise ImageError(f"{path}: too large to decode in this machine's memory") from None
    except Exception as e:  # noqa: BLE001  (the boundary: see the docstring)
        raise ImageError(f"{path}: {what} ({engine_message(e)})") from None


def read_header(data: bytes, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Format, size and alpha from the header; refuses a bomb before a pixel is decoded.
    Raises only ImageError, whatever the bytes."""
    if not data:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    with _boundary(path, "unreadable image header"):
        im = _open(data)
        w, h = im.size
        alpha = _has_alpha(im)
        fmt = str(im.format or "?")
        orientation = _orientation(im)
        im.close()
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: {w}x{h}: an image without pixels")
    if w * h > max_pixels:
        raise ImageError(
            f"{path}: {w}x{h} is {w * h / 1e6:.0f} M pixels, over the limit of {max_pixels / 1e6:.0f} M "
            f"(a decompression bomb?); raise the limit with --max-pixels if the image is genuine"
        )
    return ImageHeader(fmt, w, h, alpha, orientation)


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    # tRNS in a palette, grey or RGB PNG, a GIF's transparent index: Pillow adds the alpha.
    return im.mode in ("P", "L", "RGB") and "transparency" in im.info


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1-8) of any format carrying EXIF (JPEG, PNG eXIf before IDAT,
    WebP), read from the header bytes without decoding. TIFF: 1, Pillow turns TIFFs itself
    (and reports the turned size). A damaged EXIF block or an unknown value: 1, as viewers do."""
    raw = im.info.get("exif")
    if im.format == "TIFF" or not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(0x0112, 1))
    except Exception:  # noqa: BLE001
        return 1
    return value if 1 <= value <= 8 else 1


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
    if fmt in ("JPEG", "MPO"):  # MPO: a phone's JPEG with a second picture after the first
        return _jpeg_complete(data)
    if fmt == "PNG":
        return _png_complete(data)
    return True


def _draft_factor(header: ImageHeader, target: int | None) -> int:
    """For a JPEG far larger than needed, let libjpeg decode at 1/2, 1/4 or 1/8 scale."""
    if target is None or header.format not in ("JPEG", "MPO"):
        return 1
    longest = max(header.width, header.height)
    for factor in (8, 4, 2):
        if longest // factor >= target:
            return factor
    return 1


def _unit_scale(img: np.ndarray) -> float:
    return 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0


def _to_float(img: np.ndarray) -> np.ndarray:
    return np.clip(img.astype(np.float32) / _unit_scale(img), 0.0, 1.0)


# Pillow hands 16-bit RGB(A) PNGs over as 8-bit (the high bytes). Its unpacker of the other
# byte order reads the low bytes of the same rows, unfiltered alike: a second decode with it
# recovers the full 16 bits. Grey 16-bit PNGs arrive whole as mode I;16.
_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def _png16(data: bytes, im: Image.Image) -> np.ndarray | None:
    """HxWxC uint16 of a 16-bit RGB(A) PNG, or None for any other image."""
    if im.format != "PNG" or len(im.tile) != 1 or im.tile[0].args not in _LOW_BYTES:
        return None
    low = _open(data)
    low.tile = [low.tile[0]._replace(args=_LOW_BYTES[im.tile[0].args])]
    low.load()
    im.load()
    return (np.asarray(im).astype(np.uint16) << 8) | np.asarray(low)


def _pixels(data: bytes, header: ImageHeader, max_side: int | None) -> np.ndarray:
    """The decoded pixels as stored in HxWx3 (RGB) or HxWx4 (RGBA), uint8, uint16 or float32
    (already in [0, 1]), EXIF-oriented (with alpha too: the alpha plane turns with it)."""
    im = _open(data)
    factor = 1 if header.alpha else _draft_factor(header, max_side)
    if factor > 1:
        im.draft("RGB", (header.width // factor, header.height // factor))
    arr = _png16(data, im)
    if arr is None:
        arr = _to_array(im, header.alpha)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.size == 0:
        raise ValueError(f"decoded to an unexpected array of shape {arr.shape}")  # the boundary adds the path
    if header.orientation != 1:
        arr = _orient(arr, header.orientation)
    return arr


def _to_array(im: Image.Image, alpha: bool) -> np.ndarray:
    """Any Pillow mode as RGB(A). Integer grey beyond 8 bits becomes uint16, floats float32
    in [0, 1] (see :func:`_integer_grey`, :func:`_float_grey`); the rest goes through
    Pillow's convert, after the embedded colour profile (if any) took it to sRGB."""
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = _integer_grey(im)
    elif im.mode == "F":
        grey = _float_grey(np.asarray(im, np.float32))
    elif im.mode == "L" and _tiff_sample(im) == (2, 8):
        # Signed 8-bit TIFF: Pillow hands the bytes over as unsigned L; -128..127 → 0..255.
        grey = (np.asarray(im).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    else:
        target = "RGBA" if alpha else "RGB"
        return np.asarray(_icc_to_srgb(im, target).convert(target))
    return np.repeat(grey[:, :, None], 3, axis=2)


def _tiff_sample(im: Image.Image) -> tuple[int, int] | None:
    """(SampleFormat, BitsPerSample) of a TIFF's first channel: 1 unsigned, 2 signed, 3 float."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    fmt, bits = tags.get(339, (1,)), tags.get(258, (8,))
    first = lambda v: int(v[0] if isinstance(v, tuple) else v)
    return first(fmt), first(bits)


def _integer_grey(im: Image.Image) -> np.ndarray:
    """Integer grey as uint16. The rule: a TIFF's values are scaled by their type's range
    (signed types shifted first, so -32768..32767 → 0..65535 and int32/uint32 likewise);
    any other 32-bit "I" image (PNG, PPM, which Pillow already scales to 16 bits) is clipped
    to 0..65535."""
    values = np.asarray(im)
    sample = _tiff_sample(im) if im.mode == "I" else None
    if sample is None or sample[1] not in (16, 32):
        return np.clip(values, 0, 65535).astype(np.uint16)
    signed, bits = sample[0] == 2, sample[1]
    if bits == 32 and not signed and values.dtype == np.int32:
        values = values.view(np.uint32)  # Pillow keeps uint32 in a signed int32 "I" image
    low = -(2 ** (bits - 1)) if signed else 0
    scaled = (values.astype(np.float64) - low) * (65535 / (2**bits - 1))
    return np.clip(np.round(scaled), 0, 65535).astype(np.uint16)


# Floats inside this range are taken as [0, 1] data (a little over- and undershoot from a
# filter is common); beyond it (HDR radiance, elevations, raw sensor counts) the image is
# min-max normalized, the only scale that shows something of any range.
_FLOAT_SLACK = 1 / 16


def _float_grey(values: np.ndarray) -> np.ndarray:
    """Float grey to float32 in [0, 1]: NaN and ±Inf pixels become 0 first, then values in
    [-1/16, 1 + 1/16] are clipped to [0, 1], others min-max normalized (a constant is clipped)."""
    values = np.where(np.isfinite(values), values, 0).astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if lo >= -_FLOAT_SLACK and hi <= 1 + _FLOAT_SLACK or hi == lo:
        return np.clip(values, 0.0, 1.0)
    return ((values - lo) / (hi - lo)).astype(np.float32)


_PROFILE_SPACES = {"RGB": "RGB ", "RGBA": "RGB ", "CMYK": "CMYK", "L": "GRAY"}


def _icc_to_srgb(im: Image.Image, target: str) -> Image.Image:
    """The image converted to sRGB by its embedded ICC profile (LittleCMS, Pillow's default
    perceptual intent; matrix-shaper profiles, most cameras' and editors', treat all intents alike).

    sRGB profiles (by description) are skipped: there is nothing to do. A profile that does
    not parse, that belongs to another colour space than the pixels, or that LittleCMS cannot
    build a transform for is ignored: the pixels are taken as sRGB, as browsers do.
    16-bit images keep their profile unapplied (LittleCMS works on Pillow's 8-bit modes here).
    """
    icc = im.info.get("icc_profile")
    if not icc or ImageCms is None or im.mode not in _PROFILE_SPACES:
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in (ImageCms.getProfileDescription(src) or "").lower():
            return im
        if src.profile.xcolor_space != _PROFILE_SPACES[im.mode]:
            return im
        out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(im, src, _srgb_profile(), outputMode=out_mode)
    except Exception:  # noqa: BLE001  (a broken profile: ignored, the pixels are still good)
        return im


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> object:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation applied in numpy (any dtype; Pillow's transpose knows no 16-bit RGB)."""
    if orientation in (5, 6, 7, 8):
        arr = arr.transpose(1, 0, 2)  # 5: transpose; the others are a transpose and a flip
        if orientation == 6:
            arr = arr[:, ::-1]
        elif orientation == 7:
            arr = arr[::-1, ::-1]
        elif orientation == 8:
            arr = arr[::-1]
    elif orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


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
    ``name`` only labels the errors. Raises only ImageError, whatever the bytes."""
    path = Path(name)
    header = read_header(data, path, max_pixels)
    if not _complete(data, header.format):
        raise ImageError(f"{path}: image data is truncated")
    with _boundary(path):
        raw = _pixels(data, header, max_side)
        if max_side is not None:
            # Still 8/16-bit, so no float copy at the input's full size ever exists. The size
            # comes from the header, not from a reduced decode (341x1024 decoded at 1/2 is
            # 171x512, which fits 256 px as 86x256, where the photo itself gives 85x256): every
            # front end then agrees on the output's exact size.
            raw = resize_to(raw, *fit_longest(*_full_size(header, raw.shape[:2]), max_side), clip=False)
        alpha = _to_float(raw[:, :, 3]) if raw.shape[2] == 4 else None
        rgb = _to_float(raw[:, :, :3])
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


def _filter(before: int, after: int) -> Image.Resampling:
    """The filter along one axis, chosen to stay close to opencv's INTER_AREA when shrinking.

    Pillow's box averages the source pixels whose centres fall in the output pixel, with
    equal weights: close to the exact area average from a 3x reduction on, but below it
    some output pixels copy one source pixel and their neighbours average two. Its
    bilinear filter, widened to the scale (Pillow antialiases), is closer there (mean
    differences against INTER_AREA of 0.0004-0.0025 against box's 0.003-0.004 at 1.2-3.3x
    on a painting). Growing: bicubic.
    """
    if after >= before:
        return Image.Resampling.BICUBIC
    return Image.Resampling.BOX if before >= 3 * after else Image.Resampling.BILINEAR


def _resize_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    im = Image.fromarray(np.ascontiguousarray(plane))
    h, w = plane.shape
    fx, fy = _filter(w, width), _filter(h, height)
    if fx != fy and w != width and h != height:
        # One axis shrinks, the other grows: one pass per axis, each with its own filter
        # (Pillow resamples separably anyway, so this costs no extra pass).
        im = im.resize((width, h), fx)
        return np.asarray(im.resize((width, height), fy))
    return np.asarray(im.resize((width, height), fx if w != width else fy))


def resize_to(img: np.ndarray, height: int, width: int, *, clip: bool = True) -> np.ndarray:
    """The one resizer: HxW or HxWxC, uint8, uint16 or float32, to ``height`` x ``width``.

    Each channel is resampled on its own (alpha is not premultiplied, the colour under a
    transparent pixel is kept), in its own precision: Pillow's L, I;16 and F modes. Bicubic
    can overshoot: integer results are clamped by Pillow, float ones clipped back into
    [0, 1] (``clip=False`` leaves them, for signed values or floats on another scale).
    """
    if img.shape[0] == height and img.shape[1] == width:
        return img
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    if img.ndim == 2:
        out = _resize_plane(img, height, width)
    else:
        out = np.stack([_resize_plane(img[:, :, c], height, width) for c in range(img.shape[2])], axis=2)
    return np.clip(out, 0.0, 1.0) if clip and out.dtype == np.float32 else out


def fit_longest(height: int, width: int, side: int) -> tuple[int, int]:
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_size(height: int, width: int, size: int, fit: str = "longest") -> tuple[int, int]:
    """(h, w) for --size measured on the longest side, or on the height."""
    if fit == "height":
        return size, max(1, round(width * size / height))
    return fit_longest(height, width, size)


def resize_longest(img: np.ndarray, side: int) -> np.ndarray:
    """resize_to at ``side`` px on the longest side (a shorthand the tests and benchmarks use)."""
    return resize_to(img, *fit_longest(*img.shape[:2], side))


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


def read_png_text(path: str | Path) -> dict[str, str]:
    """A PNG's text chunks before its pixels (where encode_image writes them): Pillow reads
    them at open, up to the first IDAT, and decodes nothing (``.text`` would decode the
    whole image to find chunks after IDAT too). ``info`` also holds non-text entries (dpi,
    gamma, ICC bytes); the text ones are its strings."""
    with Image.open(path, formats=["PNG"]) as im:
        return {k: v for k, v in im.info.items() if isinstance(v, str)}


def _png_info(text: dict[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        # Latin-1 as tEXt requires (Pillow would switch to iTXt, which read_png_text skips).
        info.add_text(key, value.encode("latin-1", "replace").decode("latin-1"))
    return info


def encode_image(rgb: np.ndarray, ext: str, alpha: np.ndarray | None = None, text: dict[str, str] | None = None) -> bytes:
    """8-bit PNG/JPEG/WebP bytes of a float RGB image; alpha kept by PNG and WebP; ``text``
    becomes PNG tEXt chunks (the run's settings, read back by :func:`read_png_text`)."""
    ext = ext.lower()
    if ext not in WRITABLE:
        raise OutputError(f"unknown output format {ext}; use .png, .jpg or .webp")
    if not np.isfinite(rgb).all():
        raise OutputError("refusing to write an image with NaN or Inf pixels")
    arr = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    if alpha is not None and ext in (".png", ".webp"):
        a = np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8)
        arr = np.dstack([arr, a])
    fmt = WRITABLE[ext]
    options: dict[str, object] = {}
    if fmt == "PNG":
        # zlib level 1 with the RLE strategy, opencv's defaults: a 4096x3072 result took 0.46 s
        # and 4.4 MB here, against 2.2 s and 4.2 MB at Pillow's default level 6.
        options["compress_level"] = 1
        options["compress_type"] = 3  # Z_RLE
        if text:
            options["pnginfo"] = _png_info(text)
    else:
        options["quality"] = 95
    buf = io.BytesIO()
    try:
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, fmt, **options)
    except (OSError, ValueError, KeyError) as e:
        raise OutputError(f"could not encode a {ext} image ({e})") from None
    return buf.getvalue()


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
