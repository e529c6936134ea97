"""Hostile and unusual image files, generated at test time (nothing large is committed).

Every case is a :class:`Case`: bytes, the extension the file is saved under, what the
loader must do with it (``"ok"``: an RGB float image in [0, 1]; ``"refuse"``: an
``ImageError``) and, for decodable cases, a check of the pixels. The table of cases and
the reason each is there lives in ``tests/test_hostile_images.py``'s docstring.

Pillow writes most of the files; the ones it cannot write (signed and float TIFFs, planar
TIFFs, extra samples, LAB, 4- and 16-bit BMPs, damaged headers) are put together here by
hand, byte by byte, with small writers for TIFF and BMP.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms

Check = Callable[[np.ndarray, np.ndarray | None], None]

H, W = 32, 48  # multiples of 16: JPEG blocks and chroma subsampling stay inside quadrants


@dataclass(frozen=True)
class Case:
    name: str
    ext: str
    data: bytes
    expect: str  # "ok" or "refuse"
    why: str
    check: Check | None = None
    match: str | None = None  # a regex the refusal message must contain


# ---- reference pictures ----------------------------------------------------------------


def quadrants() -> np.ndarray:
    """HxWx3 uint8: red, green / blue, white; each turn and flip of it differs from it."""
    img = np.zeros((H, W, 3), np.uint8)
    img[: H // 2, : W // 2] = (255, 0, 0)
    img[: H // 2, W // 2 :] = (0, 255, 0)
    img[H // 2 :, : W // 2] = (0, 0, 255)
    img[H // 2 :, W // 2 :] = (255, 255, 255)
    return img


def ramp(dtype: type = np.uint8) -> np.ndarray:
    """HxW grey ramp over the type's whole range, left (lowest) to right (highest)."""
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo, hi = (info.min, info.max) if info else (0.0, 1.0)
    row = np.linspace(lo, hi, W)
    return np.repeat(row[None, :], H, axis=0).round().astype(dtype) if info else np.repeat(row[None, :], H, 0).astype(dtype)


UNIT_RAMP = np.linspace(0.0, 1.0, W, dtype=np.float32)


def pil_bytes(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


# ---- checks ----------------------------------------------------------------------------


def near(expected_rgb: np.ndarray, tol: float, alpha: np.ndarray | None = None, atol_alpha: float = 1 / 255) -> Check:
    """Mean absolute difference under ``tol`` (lossy codecs); alpha within a step if given."""
    expected = expected_rgb.astype(np.float32) / (255 if expected_rgb.dtype == np.uint8 else 1)

    def check(rgb: np.ndarray, got_alpha: np.ndarray | None) -> None:
        assert rgb.shape == expected.shape, (rgb.shape, expected.shape)
        diff = float(np.abs(rgb - expected).mean())
        assert diff < tol, f"mean difference {diff:.4f} over {tol}"
        if alpha is not None:
            assert got_alpha is not None, "alpha was lost"
            np.testing.assert_allclose(got_alpha, alpha, atol=atol_alpha)

    return check


def grey_ramp(tol: float = 1.5 / 255) -> Check:
    """A left-to-right ramp from 0 to 1 in every channel."""
    return near(np.repeat(np.repeat(UNIT_RAMP[None, :], H, 0)[:, :, None], 3, 2), tol)


def shape_only(h: int = H, w: int = W) -> Check:
    def check(rgb: np.ndarray, alpha: np.ndarray | None) -> None:
        assert rgb.shape == (h, w, 3)

    return check


# ---- hand-made TIFF and BMP --------------------------------------------------------------

_TIFF_TYPES = {"H": 3, "I": 4}  # SHORT, LONG


def _ifd(tags: dict[int, tuple[str, list[int]]], data_at: int) -> tuple[bytes, bytes]:
    """(IFD bytes, overflow bytes placed right after it) for values longer than 4 bytes."""
    entries, overflow = b"", b""
    ifd_size = 2 + 12 * len(tags) + 4
    for tag in sorted(tags):
        kind, values = tags[tag]
        packed = struct.pack(f"<{len(values)}{kind}", *values)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\0")
        else:
            field = struct.pack("<I", data_at + ifd_size + len(overflow))
            overflow += packed + b"\0" * (len(packed) % 2)
        entries += struct.pack("<HHI", tag, _TIFF_TYPES[kind], len(values)) + field
    return struct.pack("<H", len(tags)) + entries + b"\0\0\0\0", overflow


def tiff(
    planes: np.ndarray,
    photometric: int,
    sample_format: int = 1,
    planar: bool = False,
    extra: tuple[int, ...] = (),
    pages: int = 1,
    more: dict[int, tuple[str, list[int]]] | None = None,
) -> bytes:
    """An uncompressed little-endian TIFF of HxWxS ``planes`` (any numeric dtype), one strip
    per plane when ``planar``; ``pages`` copies chained as a multi-page file."""
    h, w, s = planes.shape
    bits = planes.dtype.itemsize * 8
    raw = [planes[:, :, c].astype(planes.dtype.newbyteorder("<")).tobytes() for c in range(s)] if planar else [
        planes.astype(planes.dtype.newbyteorder("<")).tobytes()
    ]
    out = bytearray(b"II*\0" + struct.pack("<I", 0))
    next_ptr = 4
    for _ in range(pages):
        offsets = []
        for chunk in raw:
            offsets.append(len(out))
            out += chunk
        if len(out) % 2:
            out += b"\0"
        tags: dict[int, tuple[str, list[int]]] = {
            256: ("I", [w]), 257: ("I", [h]), 258: ("H", [bits] * s), 259: ("H", [1]), 262: ("H", [photometric]),
            273: ("I", offsets), 277: ("H", [s]), 278: ("I", [h]), 279: ("I", [len(c) for c in raw]),
            284: ("H", [2 if planar else 1]), 339: ("H", [sample_format] * s),
        }
        if extra:
            tags[338] = ("H", list(extra))
        if photometric == 6:
            tags[530] = ("H", [1, 1])  # YCbCr without subsampling
        tags.update(more or {})
        ifd_at = len(out)
        ifd, overflow = _ifd(tags, ifd_at)
        struct.pack_into("<I", out, next_ptr, ifd_at)
        out += ifd
        next_ptr = ifd_at + len(ifd) - 4
        out += overflow
    return bytes(out)


def bmp(indices_or_rgb: np.ndarray, bpp: int, palette: np.ndarray | None = None) -> bytes:
    """A bottom-up BI_RGB BMP: 1/4/8 bits (palette indices), 16 (X1R5G5B5) or 32 (XRGB)."""
    h, w = indices_or_rgb.shape[:2]
    rows = []
    for y in range(h - 1, -1, -1):
        row = indices_or_rgb[y]
        if bpp in (1, 4, 8):
            per = 8 // bpp
            padded = np.zeros(-(-w // per) * per, np.uint8)
            padded[:w] = row
            packed = np.zeros(len(padded) // per, np.uint8)
            for k in range(per):
                packed |= padded[k::per] << (8 - bpp * (k + 1))
            line = packed.tobytes()
        elif bpp == 16:
            r, g, b = (row[:, c].astype(np.uint16) >> 3 for c in range(3))
            line = ((r << 10) | (g << 5) | b).astype("<u2").tobytes()
        else:
            line = np.dstack([row[:, 2], row[:, 1], row[:, 0], np.zeros(w, np.uint8)]).tobytes()
        rows.append(line + b"\0" * (-len(line) % 4))
    pal = b"" if palette is None else np.dstack([palette[:, 2], palette[:, 1], palette[:, 0], np.zeros(len(palette), np.uint8)]).tobytes()
    pixels = b"".join(rows)
    offset = 14 + 40 + len(pal)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, bpp, 0, len(pixels), 2835, 2835, 0 if palette is None else len(palette), 0)
    return head + info + pal + pixels


# ---- PNG surgery -----------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 8
    while i + 8 <= len(data):
        n = struct.unpack(">I", data[i : i + 4])[0]
        out.append((data[i + 4 : i + 8], data[i + 8 : i + 8 + n]))
        i += 12 + n
    return out


def png_build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def png_huge(width: int, height: int) -> bytes:
    """A header promising width x height RGB pixels, with one tiny IDAT: a bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return png_build([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\0" * 64)), (b"IEND", b"")])


def jpeg_with_size(jpg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0/SOF2) rewritten to claim another size."""
    i = jpg.index(b"\xff\xc0") if b"\xff\xc0" in jpg else jpg.index(b"\xff\xc2")
    return jpg[: i + 5] + struct.pack(">HH", height, width) + jpg[i + 9 :]


def exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_bytes(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())


# EXIF orientation → what a viewer does to the stored pixels; the file stores the inverse.
_VIEW = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
_INVERSE = {**{k: v for k, v in _VIEW.items()}, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that ``orientation`` shows ``upright``."""
    if orientation == 1:
        return upright
    return np.asarray(Image.fromarray(upright).transpose(_INVERSE[orientation]))


def swapped_primaries_profile() -> bytes:
    """Pillow's built-in sRGB profile with its red and blue colorants swapped: a non-sRGB
    RGB profile under which stored red means blue, so a converted image is told apart."""
    prof = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", prof[128:132])[0]
    where = {}
    for k in range(count):
        at = 132 + 12 * k
        where[bytes(prof[at : at + 4])] = at
    r, b = where[b"rXYZ"], where[b"bXYZ"]
    prof[r + 4 : r + 12], prof[b + 4 : b + 12] = prof[b + 4 : b + 12], prof[r + 4 : r + 12]
    prof[84:100] = b"\0" * 16  # the profile ID (an MD5) no longer matches: cleared, as allowed
    # Renamed too (same length, ASCII or UTF-16 text): loaders skip profiles named sRGB.
    out = bytes(prof).replace(b"sRGB", b"BGRs").replace("sRGB".encode("utf-16-be"), "BGRs".encode("utf-16-be"))
    return out


@lru_cache(maxsize=1)
def valid_png() -> bytes:
    return pil_bytes(Image.fromarray(quadrants()), "PNG")


@lru_cache(maxsize=1)
def valid_jpeg() -> bytes:
    return pil_bytes(Image.fromarray(quadrants()), "JPEG", quality=90)


# ---- the cases ---------------------------------------------------------------------------


def mode_cases() -> list[Case]:
    """One file per pixel mode Pillow hands over: each must arrive as RGB in [0, 1]."""
    q = quadrants()
    pq = Image.fromarray(q)
    a8 = np.repeat(np.linspace(0, 255, W).round().astype(np.uint8)[None], H, 0)
    a = a8 / 255
    grey16 = ramp(np.uint16)
    cases = [
        Case("mode-1-png", ".png", pil_bytes(pq.convert("1"), "PNG"), "ok", "1-bit bilevel", shape_only()),
        Case("mode-L-png", ".png", pil_bytes(Image.fromarray(ramp()), "PNG"), "ok", "8-bit grey", grey_ramp()),
        Case("mode-LA-png", ".png", pil_bytes(Image.fromarray(np.dstack([ramp(), a8]), "LA"), "PNG"), "ok",
             "grey + alpha: alpha kept apart", near(np.repeat(ramp()[:, :, None], 3, 2), 1 / 255, a)),
        Case("mode-RGBA-png", ".png", pil_bytes(Image.fromarray(np.dstack([q, a8])), "PNG"), "ok",
             "colour + alpha", near(q, 1 / 255, a)),
        Case("mode-P-png", ".png", pil_bytes(pq.convert("P"), "PNG"), "ok", "palette", near(q, 0.02)),
        Case("mode-P-trns-png", ".png", pil_bytes(pq.convert("P"), "PNG", transparency=0), "ok",
             "palette with a transparent index (tRNS)", shape_only()),
        Case("mode-PA-via-gif", ".gif", pil_bytes(pq.convert("P"), "GIF", transparency=1), "ok",
             "GIF with a transparent index", shape_only()),
        Case("mode-I16-png", ".png", pil_bytes(Image.fromarray(grey16), "PNG"), "ok", "16-bit grey PNG (I;16)", grey_ramp(1e-4)),
        Case("mode-RGBA16-png", ".png", _png16_rgba(), "ok", "16-bit colour + alpha PNG", near(q, 1e-3)),
        Case("mode-I16-tiff", ".tif", tiff(grey16[:, :, None], 1), "ok", "16-bit unsigned grey TIFF", grey_ramp(1e-4)),
        Case("mode-I16B-tiff", ".tif", pil_bytes(Image.frombytes("I;16B", (W, H), grey16.astype(">u2").tobytes()), "TIFF"), "ok",
             "16-bit big-endian grey (I;16B)", grey_ramp(1e-4)),
        Case("mode-I8S-tiff", ".tif", tiff(ramp(np.int8)[:, :, None], 1, sample_format=2), "ok",
             "signed 8-bit TIFF: -128..127 shifted to 0..1", grey_ramp()),
        Case("mode-I16S-tiff", ".tif", tiff(ramp(np.int16)[:, :, None], 1, sample_format=2), "ok",
             "signed 16-bit TIFF (I;16S)", grey_ramp(1e-4)),
        Case("mode-I32S-tiff", ".tif", tiff(ramp(np.int32)[:, :, None], 1, sample_format=2), "ok",
             "signed 32-bit TIFF (mode I)", grey_ramp(1e-4)),
        Case("mode-I32U-tiff", ".tif", tiff(ramp(np.uint32)[:, :, None], 1), "ok",
             "unsigned 32-bit TIFF", grey_ramp(1e-4)),
        Case("mode-F-unit-tiff", ".tif", tiff(ramp(np.float32)[:, :, None], 1, sample_format=3), "ok",
             "float TIFF within [0, 1]: taken as is", grey_ramp(1e-4)),
        Case("mode-F-hdr-tiff", ".tif", tiff((ramp(np.float32) * 1000 - 200)[:, :, None], 1, sample_format=3), "ok",
             "float TIFF far outside [0, 1]: min-max normalized", grey_ramp(1e-4)),
        Case("mode-F-nan-tiff", ".tif", tiff(_with_nan(ramp(np.float32))[:, :, None], 1, sample_format=3), "ok",
             "float TIFF with NaN and Inf: those pixels 0", shape_only()),
        Case("mode-F64-tiff", ".tif", tiff(ramp(np.float32).astype(np.float64)[:, :, None], 1, sample_format=3), "any",
             "64-bit float TIFF: Pillow has no such mode"),
        Case("mode-F16-tiff", ".tif", tiff(ramp(np.float32).astype(np.float16)[:, :, None], 1, sample_format=3), "any",
             "16-bit float TIFF: Pillow has no half floats"),
        Case("mode-RGBF-tiff", ".tif", tiff(q.astype(np.float32) / 255, 2, sample_format=3), "any",
             "3-channel float TIFF: Pillow has no such mode"),
        Case("mode-RGB16-tiff", ".tif", tiff(q.astype(np.uint16) * 257, 2), "ok", "48-bit RGB TIFF", near(q, 1e-3)),
        Case("mode-planar-tiff", ".tif", tiff(q, 2, planar=True), "ok", "planar (one plane per channel) RGB TIFF", near(q, 1e-6)),
        Case("mode-extra-tiff", ".tif", tiff(np.dstack([q, a8]), 2, extra=(2,)), "ok",
             "RGB + unassociated alpha (ExtraSamples=2)", near(q, 1 / 255, a)),
        Case("mode-premul-tiff", ".tif", tiff(np.dstack([q, np.full((H, W), 255, np.uint8)]), 2, extra=(1,)), "ok",
             "RGB + associated (premultiplied) alpha (RGBa)", near(q, 1 / 255)),
        Case("mode-RGBX-tiff", ".tif", tiff(np.dstack([q, a8]), 2, extra=(0,)), "ok",
             "RGB + an unspecified extra sample: dropped", near(q, 1 / 255)),
        Case("mode-CMYK-tiff", ".tif", pil_bytes(pq.convert("CMYK"), "TIFF"), "ok", "CMYK TIFF", near(q, 0.02)),
        Case("mode-YCbCr-tiff", ".tif", tiff(np.asarray(pq.convert("YCbCr")), 6), "ok", "YCbCr TIFF", near(q, 0.03)),
        Case("mode-LAB-tiff", ".tif", pil_bytes(ImageCms.applyTransform(pq, _to_lab()), "TIFF"), "ok",
             "CIELAB TIFF: converted to sRGB", near(q, 0.03)),
        Case("mode-1-tiff", ".tif", pil_bytes(pq.convert("1"), "TIFF"), "ok", "1-bit TIFF", shape_only()),
    ]
    return cases


def _to_lab() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")


def _with_nan(img: np.ndarray) -> np.ndarray:
    img = img.copy()
    img[0, 0], img[0, 1], img[0, 2] = np.nan, np.inf, -np.inf
    return img


def _png16_rgba() -> bytes:
    """16-bit RGBA PNG written by hand (Pillow cannot write one)."""
    q = quadrants().astype(np.uint16) * 257
    rgba = np.dstack([q, np.full((H, W), 65535, np.uint16)]).astype(">u2")
    raw = b"".join(b"\0" + rgba[y].tobytes() for y in range(H))
    ihdr = struct.pack(">IIBBBBB", W, H, 16, 6, 0, 0, 0)
    return png_build([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")])


def format_cases() -> list[Case]:
    """Containers and codec variants: each decodes, first frame of an animation or pages."""
    q = quadrants()
    pq = Image.fromarray(q)
    a8 = np.repeat(np.linspace(0, 255, W).round().astype(np.uint8)[None], H, 0)
    other = Image.fromarray(255 - q)
    pal = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
    idx = np.zeros((H, W), np.uint8)
    idx[: H // 2, W // 2 :], idx[H // 2 :, : W // 2], idx[H // 2 :, W // 2 :] = 1, 2, 3
    bw = np.zeros((H, W), np.uint8)
    bw[:, W // 2 :] = 1
    return [
        Case("jpeg-cmyk-adobe", ".jpg", pil_bytes(pq.convert("CMYK"), "JPEG", quality=95), "ok",
             "CMYK JPEG as Photoshop writes it (Adobe APP14, inverted)", near(q, 0.03)),
        Case("jpeg-progressive", ".jpg", pil_bytes(pq, "JPEG", quality=95, progressive=True), "ok",
             "progressive JPEG", near(q, 0.02)),
        Case("jpeg-grey", ".jpg", pil_bytes(pq.convert("L"), "JPEG"), "ok", "greyscale JPEG", shape_only()),
        Case("webp-lossless", ".webp", pil_bytes(pq, "WEBP", lossless=True), "ok", "lossless WebP", near(q, 1e-6)),
        Case("webp-alpha", ".webp", pil_bytes(Image.fromarray(np.dstack([q, a8])), "WEBP", lossless=True, exact=True), "ok",
             "WebP with alpha", near(q, 1e-6, a8 / 255)),
        Case("webp-animated", ".webp", pil_bytes(pq, "WEBP", save_all=True, append_images=[other], lossless=True), "ok",
             "animated WebP: first frame", near(q, 1e-6)),
        Case("gif-animated", ".gif", pil_bytes(pq.convert("P"), "GIF", save_all=True, append_images=[other.convert("P")]), "ok",
             "animated GIF: first frame", near(q, 0.02)),
        Case("png-apng", ".png", pil_bytes(pq, "PNG", save_all=True, append_images=[other]), "ok",
             "animated PNG: first frame", near(q, 1e-6)),
        Case("tiff-multipage", ".tif", tiff(q, 2, pages=3), "ok", "three-page TIFF: first page", near(q, 1e-6)),
        Case("tiff-lzw", ".tif", pil_bytes(pq, "TIFF", compression="tiff_lzw"), "ok", "LZW TIFF (libtiff)", near(q, 1e-6)),
        Case("tiff-jpeg", ".tif", pil_bytes(pq, "TIFF", compression="jpeg"), "ok", "JPEG-in-TIFF (libtiff)", near(q, 0.03)),
        Case("bmp-1", ".bmp", bmp(bw, 1, pal[[0, 3]]), "ok", "1-bit BMP", near(pal[[0, 3]][bw], 1e-6)),
        Case("bmp-4", ".bmp", bmp(idx, 4, pal), "ok", "4-bit BMP", near(q, 1e-6)),
        Case("bmp-8", ".bmp", bmp(idx, 8, pal), "ok", "8-bit palette BMP", near(q, 1e-6)),
        Case("bmp-16", ".bmp", bmp(q, 16), "ok", "16-bit (X1R5G5B5) BMP", near(q, 0.03)),
        Case("bmp-24", ".bmp", pil_bytes(pq, "BMP"), "ok", "24-bit BMP", near(q, 1e-6)),
        Case("bmp-32", ".bmp", bmp(q, 32), "ok", "32-bit (XRGB) BMP", near(q, 1e-6)),
        Case("png-as-jpg", ".jpg", valid_png(), "ok", "a PNG named .jpg: the bytes decide", near(q, 1e-6)),
        Case("jpeg-as-png", ".png", valid_jpeg(), "ok", "a JPEG named .png", near(q, 0.02)),
        Case("ppm", ".ppm", pil_bytes(pq, "PPM"), "ok", "binary PPM", near(q, 1e-6)),
    ]


def orientation_cases() -> list[Case]:
    """All 8 EXIF orientations of a JPEG, plus PNG, WebP and TIFF carrying one: upright."""
    q = quadrants()
    cases = [
        Case(f"exif-orientation-{o}", ".jpg", exif_jpeg(stored_for(q, o), o), "ok",
             f"JPEG with EXIF orientation {o}: shown upright", near(q, 0.03))
        for o in range(1, 9)
    ]
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(stored_for(q, 6))
    cases += [
        Case("exif-orientation-png", ".png", pil_bytes(stored, "PNG", exif=exif.tobytes()), "ok",
             "PNG with an eXIf orientation 6", near(q, 1e-6)),
        Case("exif-orientation-webp", ".webp", pil_bytes(stored, "WEBP", lossless=True, exif=exif.tobytes()), "ok",
             "WebP with EXIF orientation 6", near(q, 1e-6)),
        Case("exif-orientation-tiff", ".tif", tiff(np.asarray(stored), 2, more={274: ("H", [6])}), "ok",
             "TIFF Orientation tag 6", near(q, 1e-6)),
        Case("exif-orientation-alpha", ".png",
             pil_bytes(Image.fromarray(np.dstack([np.asarray(stored), np.full(stored.size[::-1], 255, np.uint8)])), "PNG",
                       exif=exif.tobytes()), "ok", "RGBA PNG with orientation 6: turned too", near(q, 1e-6)),
        Case("exif-orientation-bogus", ".jpg", exif_jpeg(q, 77), "ok", "EXIF orientation 77: ignored", near(q, 0.03)),
    ]
    return cases


def icc_cases() -> list[Case]:
    """Embedded colour profiles: sRGB (nothing to do), non-sRGB (converted), broken (ignored)."""
    q = quadrants()
    pq = Image.fromarray(q)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    swapped = swapped_primaries_profile()
    return [
        Case("icc-srgb-png", ".png", pil_bytes(pq, "PNG", icc_profile=srgb), "ok", "PNG with an sRGB profile", near(q, 1e-6)),
        Case("icc-swapped-png", ".png", pil_bytes(pq, "PNG", icc_profile=swapped), "ok",
             "PNG with a non-sRGB profile (red and blue primaries swapped): converted to sRGB", near(q[:, :, ::-1], 0.02)),
        Case("icc-swapped-jpeg", ".jpg", pil_bytes(pq, "JPEG", quality=95, icc_profile=swapped), "ok",
             "JPEG with the swapped profile: converted", near(q[:, :, ::-1], 0.04)),
        Case("icc-broken-png", ".png", pil_bytes(pq, "PNG", icc_profile=b"not a profile" * 20), "ok",
             "PNG with a garbage iCCP profile: profile ignored", near(q, 1e-6)),
        Case("icc-lab-profile-png", ".png", pil_bytes(pq, "PNG", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()),
             "ok", "RGB PNG carrying a LAB profile (wrong colour space): profile ignored", near(q, 1e-6)),
    ]


def _truncations(name: str, ext: str, data: bytes) -> list[Case]:
    """The file cut at its first 8/33 bytes and at 25/50/90 % and one byte short of whole."""
    cuts = sorted({8, 33, len(data) // 4, len(data) // 2, len(data) * 9 // 10})
    cases = [Case(f"{name}-cut-{n}", ext, data[:n], "refuse", f"{name} cut to {n} of {len(data)} bytes") for n in cuts]
    # One byte short: a PNG's IEND CRC, a GIF's trailer: every pixel is there, either answer is fine.
    return cases + [Case(f"{name}-cut-last", ext, data[:-1], "any", f"{name} missing its last byte")]


def damage_cases() -> list[Case]:
    """Broken, lying and empty files: each refused with an ImageError, none crashes or hangs."""
    q = Image.fromarray(quadrants())
    png, jpg = valid_png(), valid_jpeg()
    chunks = png_chunks(png)
    ihdr = chunks[0][1]
    bad_crc = png[:29] + bytes([png[29] ^ 0xFF]) + png[30:]  # IHDR's CRC
    long_idat = png.replace(b"IDAT", b"IDAT", 1)
    at = long_idat.index(b"IDAT") - 4
    long_idat = long_idat[:at] + struct.pack(">I", 0x7FFFFFF0) + long_idat[at + 4 :]
    gif = pil_bytes(q.convert("P"), "GIF")
    cases = []
    for name, ext, data in [("png", ".png", png), ("jpeg", ".jpg", jpg), ("gif", ".gif", gif),
                            ("webp", ".webp", pil_bytes(q, "WEBP")), ("tiff", ".tif", pil_bytes(q, "TIFF")),
                            ("bmp", ".bmp", pil_bytes(q, "BMP")), ("tiff-lzw", ".tif", pil_bytes(q, "TIFF", compression="tiff_lzw"))]:
        cases += _truncations(name, ext, data)
    cases += [
        Case("empty", ".png", b"", "refuse", "zero bytes", match="empty"),
        Case("text-as-png", ".png", b"hello, I am not an image\n" * 10, "refuse", "a text file named .png", match="not an image"),
        Case("html-as-jpg", ".jpg", b"<!doctype html><html><body>404</body></html>", "refuse", "an error page saved as .jpg"),
        Case("eps-as-png", ".png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "refuse",
             "PostScript: Pillow would run Ghostscript on it; formats are allow-listed"),
        Case("zip-as-png", ".png", b"PK\x03\x04" + b"\0" * 100, "refuse", "a ZIP archive named .png"),
        Case("png-bad-crc", ".png", bad_crc, "refuse", "PNG whose IHDR CRC is wrong"),
        Case("png-idat-length-huge", ".png", long_idat, "refuse", "PNG whose IDAT claims 2 GB"),
        Case("png-ihdr-length-huge", ".png", png[:8] + struct.pack(">I", 0xFFFFFFFF) + png[12:], "refuse",
             "PNG whose IHDR length is 4 GB"),
        Case("png-no-idat", ".png", png_build([chunks[0], (b"IEND", b"")]), "refuse", "PNG with a header and no pixel data"),
        Case("png-zero-width", ".png", png_build([(b"IHDR", struct.pack(">I", 0) + ihdr[4:])] + chunks[1:]), "refuse",
             "PNG 0 pixels wide"),
        Case("png-bad-depth", ".png", png_build([(b"IHDR", ihdr[:8] + b"\x07" + ihdr[9:])] + chunks[1:]), "refuse",
             "PNG with bit depth 7"),
        Case("png-garbage-idat", ".png", png_build([chunks[0], (b"IDAT", b"\x78\x9c" + b"\xff" * 200), (b"IEND", b"")]),
             "refuse", "PNG whose IDAT is not a zlib stream"),
        Case("png-short-idat", ".png", png_build([chunks[0], (b"IDAT", zlib.compress(b"\0" * 50)), (b"IEND", b"")]),
             "refuse", "PNG whose pixel data ends early (whole chunks)"),
        Case("png-iccp-bomb", ".png", png_build([chunks[0], (b"iCCP", b"x\0\0" + zlib.compress(b"\0" * 50_000_000))] + chunks[1:]),
             "refuse", "PNG whose iCCP inflates to 50 MB: Pillow refuses chunks over 1 MB"),
        Case("png-ztxt-bomb", ".png", png_build([chunks[0], (b"zTXt", b"k\0\0" + zlib.compress(b"a" * 50_000_000))] + chunks[1:]),
             "refuse", "PNG whose zTXt inflates to 50 MB"),
        Case("png-huge", ".png", png_huge(100_000, 100_000), "refuse", "PNG header claiming 100000x100000", match="over the limit"),
        Case("jpeg-huge", ".jpg", jpeg_with_size(jpg, 65_535, 65_535), "refuse", "JPEG header claiming 65535x65535 (its maximum)",
             match="over the limit"),
        Case("jpeg-zero-height", ".jpg", jpeg_with_size(jpg, W, 0), "refuse", "JPEG with height 0 (DNL, never sent)"),
        Case("jpeg-wrong-size", ".jpg", jpeg_with_size(jpg, W * 2, H * 2), "any", "JPEG claiming twice its size"),
        Case("gif-huge", ".gif", gif[:6] + struct.pack("<HH", 65_535, 65_535) + gif[10:], "refuse", "GIF screen 65535x65535"),
        Case("gif-no-frames", ".gif", gif[:13 + 3 * (2 << (gif[10] & 7))] + b";", "refuse", "GIF with no image in it"),
        Case("tiff-huge", ".tif", tiff(np.zeros((1, 1, 1), np.uint8), 1, more={256: ("I", [100_000]), 257: ("I", [100_000])}),
             "refuse", "TIFF claiming 100000x100000 with a 1-byte strip", match="over the limit"),
        Case("tiff-no-ifd", ".tif", b"II*\0\0\0\0\0", "refuse", "TIFF with no image directory"),
        Case("tiff-ifd-loop", ".tif", _tiff_loop(), "any", "multi-page TIFF whose next-IFD pointer points at itself"),
        Case("tiff-strip-outside", ".tif", tiff(quadrants(), 2, more={273: ("I", [10_000_000])}), "refuse",
             "TIFF whose strip lies past the end of the file"),
        Case("tiff-jpeg-bad-tables", ".tif", _tiff_jpeg_bad_tables(), "refuse",
             "JPEG-in-TIFF with broken JPEGTables: libtiff prints to fd 2 unless silenced"),
        Case("bmp-huge", ".bmp", _bmp_sized(100_000, 100_000), "refuse", "BMP header claiming 100000x100000"),
        Case("bmp-negative", ".bmp", _bmp_sized(W, -(2**31)), "refuse", "BMP with height -2^31"),
        Case("webp-huge", ".webp", _webp_huge(), "refuse", "WebP VP8X claiming 16384x16384"),
    ]
    return cases


def _tiff_loop() -> bytes:
    data = bytearray(tiff(quadrants(), 2))
    ifd = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[ifd : ifd + 2])[0]
    struct.pack_into("<I", data, ifd + 2 + 12 * n, ifd)
    return bytes(data)


def _tiff_jpeg_bad_tables() -> bytes:
    """The quantization tables' ids in a JPEG-compressed TIFF's JPEGTables made invalid."""
    data = bytearray(pil_bytes(Image.fromarray(quadrants()), "TIFF", compression="jpeg"))
    at = data.index(b"\xff\xdb")
    data[at + 4] = 0x0F  # Pq/Tq: table id 15, which does not exist
    return bytes(data)


def _bmp_sized(width: int, height: int) -> bytes:
    data = bytearray(pil_bytes(Image.fromarray(quadrants()), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def _webp_huge() -> bytes:
    """A VP8X header (the extended WebP container) claiming 16384x16384, then a tiny image."""
    small = pil_bytes(Image.fromarray(quadrants()), "WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (16383).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + small[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


@lru_cache(maxsize=1)
def corpus() -> tuple[Case, ...]:
    cases = mode_cases() + format_cases() + orientation_cases() + icc_cases() + damage_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return tuple(cases)
