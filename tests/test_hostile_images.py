"""Hostile images: every input either decodes to RGB float32 in [0, 1] or is refused with
one ImageError line; no other exception, no decoder warning, nothing on fd 2, no case over 5 s.

The corpus is generated at test time by ``tests/hostile_corpus.py`` (nothing large is
committed). The cases, the extension each is saved under, what must happen (ok: decoded,
and its pixels checked where a check is given; refuse: ImageError; any: either, as long as
it is one of the two) and why each is there:

    name                         ext   expect why
    mode-1-png                   .png  ok     1-bit bilevel
    mode-L-png                   .png  ok     8-bit grey
    mode-LA-png                  .png  ok     grey + alpha: alpha kept apart
    mode-RGBA-png                .png  ok     colour + alpha
    mode-P-png                   .png  ok     palette
    mode-P-trns-png              .png  ok     palette with a transparent index (tRNS)
    mode-PA-via-gif              .gif  ok     GIF with a transparent index
    mode-I16-png                 .png  ok     16-bit grey PNG (I;16)
    mode-RGBA16-png              .png  ok     16-bit colour + alpha PNG
    mode-I16-tiff                .tif  ok     16-bit unsigned grey TIFF
    mode-I16B-tiff               .tif  ok     16-bit big-endian grey (I;16B)
    mode-I8S-tiff                .tif  ok     signed 8-bit TIFF: -128..127 shifted to 0..1
    mode-I16S-tiff               .tif  ok     signed 16-bit TIFF (I;16S)
    mode-I32S-tiff               .tif  ok     signed 32-bit TIFF (mode I)
    mode-I32U-tiff               .tif  ok     unsigned 32-bit TIFF
    mode-F-unit-tiff             .tif  ok     float TIFF within [0, 1]: taken as is
    mode-F-hdr-tiff              .tif  ok     float TIFF far outside [0, 1]: min-max normalized
    mode-F-nan-tiff              .tif  ok     float TIFF with NaN and Inf: those pixels 0
    mode-F64-tiff                .tif  any    64-bit float TIFF: Pillow has no such mode
    mode-F16-tiff                .tif  any    16-bit float TIFF: Pillow has no half floats
    mode-RGBF-tiff               .tif  any    3-channel float TIFF: Pillow has no such mode
    mode-RGB16-tiff              .tif  ok     48-bit RGB TIFF
    mode-planar-tiff             .tif  ok     planar (one plane per channel) RGB TIFF
    mode-extra-tiff              .tif  ok     RGB + unassociated alpha (ExtraSamples=2)
    mode-premul-tiff             .tif  ok     RGB + associated (premultiplied) alpha (RGBa)
    mode-RGBX-tiff               .tif  ok     RGB + an unspecified extra sample: dropped
    mode-CMYK-tiff               .tif  ok     CMYK TIFF
    mode-YCbCr-tiff              .tif  ok     YCbCr TIFF
    mode-LAB-tiff                .tif  ok     CIELAB TIFF: converted to sRGB
    mode-1-tiff                  .tif  ok     1-bit TIFF
    jpeg-cmyk-adobe              .jpg  ok     CMYK JPEG as Photoshop writes it (Adobe APP14, inverted)
    jpeg-progressive             .jpg  ok     progressive JPEG
    jpeg-grey                    .jpg  ok     greyscale JPEG
    webp-lossless                .webp ok     lossless WebP
    webp-alpha                   .webp ok     WebP with alpha
    webp-animated                .webp ok     animated WebP: first frame
    gif-animated                 .gif  ok     animated GIF: first frame
    png-apng                     .png  ok     animated PNG: first frame
    tiff-multipage               .tif  ok     three-page TIFF: first page
    tiff-lzw                     .tif  ok     LZW TIFF (libtiff)
    tiff-jpeg                    .tif  ok     JPEG-in-TIFF (libtiff)
    bmp-1                        .bmp  ok     1-bit BMP
    bmp-4                        .bmp  ok     4-bit BMP
    bmp-8                        .bmp  ok     8-bit palette BMP
    bmp-16                       .bmp  ok     16-bit (X1R5G5B5) BMP
    bmp-24                       .bmp  ok     24-bit BMP
    bmp-32                       .bmp  ok     32-bit (XRGB) BMP
    png-as-jpg                   .jpg  ok     a PNG named .jpg: the bytes decide
    jpeg-as-png                  .png  ok     a JPEG named .png
    ppm                          .ppm  ok     binary PPM
    exif-orientation-1           .jpg  ok     JPEG with EXIF orientation 1: shown upright
    exif-orientation-2           .jpg  ok     JPEG with EXIF orientation 2: shown upright
    exif-orientation-3           .jpg  ok     JPEG with EXIF orientation 3: shown upright
    exif-orientation-4           .jpg  ok     JPEG with EXIF orientation 4: shown upright
    exif-orientation-5           .jpg  ok     JPEG with EXIF orientation 5: shown upright
    exif-orientation-6           .jpg  ok     JPEG with EXIF orientation 6: shown upright
    exif-orientation-7           .jpg  ok     JPEG with EXIF orientation 7: shown upright
    exif-orientation-8           .jpg  ok     JPEG with EXIF orientation 8: shown upright
    exif-orientation-png         .png  ok     PNG with an eXIf orientation 6
    exif-orientation-webp        .webp ok     WebP with EXIF orientation 6
    exif-orientation-tiff        .tif  ok     TIFF Orientation tag 6
    exif-orientation-alpha       .png  ok     RGBA PNG with orientation 6: turned too
    exif-orientation-bogus       .jpg  ok     EXIF orientation 77: ignored
    icc-srgb-png                 .png  ok     PNG with an sRGB profile
    icc-swapped-png              .png  ok     PNG with a non-sRGB profile (red and blue primaries swapped): converted to sRGB
    icc-swapped-jpeg             .jpg  ok     JPEG with the swapped profile: converted
    icc-broken-png               .png  ok     PNG with a garbage iCCP profile: profile ignored
    icc-lab-profile-png          .png  ok     RGB PNG carrying a LAB profile (wrong colour space): profile ignored
    png-cut-8                    .png  refuse png cut to 8 of 129 bytes
    png-cut-32                   .png  refuse png cut to 32 of 129 bytes
    png-cut-33                   .png  refuse png cut to 33 of 129 bytes
    png-cut-64                   .png  refuse png cut to 64 of 129 bytes
    png-cut-116                  .png  refuse png cut to 116 of 129 bytes
    png-cut-last                 .png  any    png missing its last byte
    jpeg-cut-8                   .jpg  refuse jpeg cut to 8 of 718 bytes
    jpeg-cut-33                  .jpg  refuse jpeg cut to 33 of 718 bytes
    jpeg-cut-179                 .jpg  refuse jpeg cut to 179 of 718 bytes
    jpeg-cut-359                 .jpg  refuse jpeg cut to 359 of 718 bytes
    jpeg-cut-646                 .jpg  refuse jpeg cut to 646 of 718 bytes
    jpeg-cut-last                .jpg  any    jpeg missing its last byte
    gif-cut-8                    .gif  refuse gif cut to 8 of 217 bytes
    gif-cut-33                   .gif  refuse gif cut to 33 of 217 bytes
    gif-cut-54                   .gif  refuse gif cut to 54 of 217 bytes
    gif-cut-108                  .gif  refuse gif cut to 108 of 217 bytes
    gif-cut-195                  .gif  refuse gif cut to 195 of 217 bytes
    gif-cut-last                 .gif  any    gif missing its last byte
    webp-cut-8                   .webp refuse webp cut to 8 of 130 bytes
    webp-cut-32                  .webp refuse webp cut to 32 of 130 bytes
    webp-cut-33                  .webp refuse webp cut to 33 of 130 bytes
    webp-cut-65                  .webp refuse webp cut to 65 of 130 bytes
    webp-cut-117                 .webp refuse webp cut to 117 of 130 bytes
    webp-cut-last                .webp any    webp missing its last byte
    tiff-cut-8                   .tif  refuse tiff cut to 8 of 4748 bytes
    tiff-cut-33                  .tif  refuse tiff cut to 33 of 4748 bytes
    tiff-cut-1187                .tif  refuse tiff cut to 1187 of 4748 bytes
    tiff-cut-2374                .tif  refuse tiff cut to 2374 of 4748 bytes
    tiff-cut-4273                .tif  refuse tiff cut to 4273 of 4748 bytes
    tiff-cut-last                .tif  any    tiff missing its last byte
    bmp-cut-8                    .bmp  refuse bmp cut to 8 of 4662 bytes
    bmp-cut-33                   .bmp  refuse bmp cut to 33 of 4662 bytes
    bmp-cut-1165                 .bmp  refuse bmp cut to 1165 of 4662 bytes
    bmp-cut-2331                 .bmp  refuse bmp cut to 2331 of 4662 bytes
    bmp-cut-4195                 .bmp  refuse bmp cut to 4195 of 4662 bytes
    bmp-cut-last                 .bmp  any    bmp missing its last byte
    tiff-lzw-cut-8               .tif  refuse tiff-lzw cut to 8 of 396 bytes
    tiff-lzw-cut-33              .tif  refuse tiff-lzw cut to 33 of 396 bytes
    tiff-lzw-cut-99              .tif  refuse tiff-lzw cut to 99 of 396 bytes
    tiff-lzw-cut-198             .tif  refuse tiff-lzw cut to 198 of 396 bytes
    tiff-lzw-cut-356             .tif  refuse tiff-lzw cut to 356 of 396 bytes
    tiff-lzw-cut-last            .tif  any    tiff-lzw missing its last byte
    empty                        .png  refuse zero bytes
    text-as-png                  .png  refuse a text file named .png
    html-as-jpg                  .jpg  refuse an error page saved as .jpg
    eps-as-png                   .png  refuse PostScript: Pillow would run Ghostscript on it; formats are allow-listed
    zip-as-png                   .png  refuse a ZIP archive named .png
    png-bad-crc                  .png  refuse PNG whose IHDR CRC is wrong
    png-idat-length-huge         .png  refuse PNG whose IDAT claims 2 GB
    png-ihdr-length-huge         .png  refuse PNG whose IHDR length is 4 GB
    png-no-idat                  .png  refuse PNG with a header and no pixel data
    png-zero-width               .png  refuse PNG 0 pixels wide
    png-bad-depth                .png  refuse PNG with bit depth 7
    png-garbage-idat             .png  refuse PNG whose IDAT is not a zlib stream
    png-short-idat               .png  refuse PNG whose pixel data ends early (whole chunks)
    png-iccp-bomb                .png  refuse PNG whose iCCP inflates to 50 MB: Pillow refuses chunks over 1 MB
    png-ztxt-bomb                .png  refuse PNG whose zTXt inflates to 50 MB
    png-huge                     .png  refuse PNG header claiming 100000x100000
    jpeg-huge                    .jpg  refuse JPEG header claiming 65535x65535 (its maximum)
    jpeg-zero-height             .jpg  refuse JPEG with height 0 (DNL, never sent)
    jpeg-wrong-size              .jpg  any    JPEG claiming twice its size
    gif-huge                     .gif  refuse GIF screen 65535x65535
    gif-no-frames                .gif  refuse GIF with no image in it
    tiff-huge                    .tif  refuse TIFF claiming 100000x100000 with a 1-byte strip
    tiff-no-ifd                  .tif  refuse TIFF with no image directory
    tiff-ifd-loop                .tif  any    multi-page TIFF whose next-IFD pointer points at itself
    tiff-strip-outside           .tif  refuse TIFF whose strip lies past the end of the file
    tiff-jpeg-bad-tables         .tif  refuse JPEG-in-TIFF with broken JPEGTables: libtiff prints to fd 2 unless silenced
    bmp-huge                     .bmp  refuse BMP header claiming 100000x100000
    bmp-negative                 .bmp  refuse BMP with height -2^31
    webp-huge                    .webp refuse WebP VP8X claiming 16384x16384

(The table is checked against the corpus by ``test_docstring_table_lists_every_case``.)

Rules this pins down (image_io's docstrings say the same):

- integer grey beyond 8 bits: TIFF values scaled by their type's range, signed types shifted
  first (int8 -128..127, int16, int32 → 0..1; uint32 by 2^32 - 1); other "I" images clipped
  to 16 bits;
- float grey: NaN/±Inf → 0; values within [-1/16, 1 + 1/16] clipped to [0, 1], anything
  wider min-max normalized;
- alpha is kept apart (returned as the second array), never composited here;
- EXIF orientation is applied for every format (Pillow turns TIFFs itself), alpha or not;
- an embedded ICC profile that is not sRGB is converted to sRGB with LittleCMS (8-bit
  RGB, RGBA, CMYK and grey); a broken or mismatched profile is ignored;
- only PNG, JPEG/MPO, WebP, GIF, BMP, TIFF, PPM, AVIF and JPEG 2000 are opened (EPS would
  run Ghostscript; TGA and friends have no magic number).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxstyle.errors import ImageError
from onnxstyle.runtime.image_io import decode_image, load_image, read_header

sys.path.insert(0, str(Path(__file__).parent))
import hostile_corpus as hc

CASES = {c.name: c for c in hc.corpus()}
DATA = Path(__file__).parent / "data"
DEADLINE_S = 5.0


def assert_image(rgb: np.ndarray, alpha: np.ndarray | None) -> None:
    assert rgb.dtype == np.float32 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 1
    assert np.isfinite(rgb).all() and rgb.min() >= 0.0 and rgb.max() <= 1.0
    if alpha is not None:
        assert alpha.shape == rgb.shape[:2] and alpha.min() >= 0.0 and alpha.max() <= 1.0


def outcome(data: bytes, name: str, max_side: int | None = None) -> tuple[str, object]:
    """("ok", (rgb, alpha)) or ("refuse", message); anything else propagates and fails."""
    try:
        return "ok", decode_image(data, name, max_side)
    except ImageError as e:
        return "refuse", str(e)


def test_docstring_table_lists_every_case() -> None:
    doc = __doc__ or ""
    listed = [line.split()[0] for line in doc.split("why\n", 1)[1].split("\n\n", 1)[0].splitlines() if line.strip()]
    assert listed == list(CASES), "regenerate the table in this module's docstring"


@pytest.mark.parametrize("name", list(CASES))
def test_case(name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    path = tmp_path / f"input{case.ext}"
    path.write_bytes(case.data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            got = ("ok", load_image(path))
        except ImageError as e:
            got = ("refuse", str(e))
        elapsed = time.perf_counter() - start
        header_ok = _header_outcome(case.data, path)
    assert elapsed < DEADLINE_S
    assert not caught, [str(w.message) for w in caught]
    out, err = capfd.readouterr()
    assert out == "" and err == "", "a decoder wrote to stdout/stderr"
    if case.expect != "any":
        assert got[0] == case.expect, got[1] if got[0] == "refuse" else "decoded, expected a refusal"
    if got[0] == "refuse":
        message = str(got[1])
        assert message.startswith(str(path)) and "\n" not in message and message.isprintable()
        if case.match:
            assert case.match in message
    else:
        rgb, alpha = got[1]  # type: ignore[misc]
        assert_image(rgb, alpha)
        assert header_ok, "decoded but the header was refused"
        if case.check:
            case.check(rgb, alpha)


def _header_outcome(data: bytes, path: Path) -> bool:
    """read_header as the service's intake calls it (no limit): ImageError or a header."""
    try:
        header = read_header(data, path, sys.maxsize)
    except ImageError:
        return False
    assert header.width > 0 and header.height > 0
    return True


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.expect == "ok"])
def test_case_reduced(name: str) -> None:
    """The same inputs at --size 16: the draft/resize path sees every mode too."""
    kind, value = outcome(CASES[name].data, name, max_side=16)
    assert kind == "ok", value
    rgb, alpha = value  # type: ignore[misc]
    assert_image(rgb, alpha)
    assert max(rgb.shape[:2]) == 16


def test_orientation_header_matches_pixels() -> None:
    """ImageHeader.oriented (what the service plans sizes with) is the decoded shape."""
    for name, case in CASES.items():
        if name.startswith("exif-orientation"):
            header = read_header(case.data, Path(name))
            rgb, _ = decode_image(case.data, name)
            assert header.oriented == rgb.shape[:2], name


# ---- mutations: random damage to small valid files -------------------------------------

SEEDS = {
    "png": hc.valid_png(),
    "jpeg": hc.valid_jpeg(),
    "png16": CASES["mode-RGBA16-png"].data,
    "tif": CASES["tiff-jpeg"].data,  # JPEG-in-TIFF: libtiff and libjpeg under Pillow
}


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed file with 1-8 byte flips, insertions, deletions or overwrites, maybe cut short."""
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and len(data) > 1:
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return kind, bytes(data)


@settings(max_examples=250, deadline=DEADLINE_S * 1000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated())
def test_mutated_png_and_jpeg(case: tuple[str, bytes]) -> None:
    kind, data = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping the decoder fails the example
        result, value = outcome(data, f"m.{kind}")
        if result == "ok":
            rgb, alpha = value  # type: ignore[misc]
            assert_image(rgb, alpha)
            assert max(rgb.shape[:2]) <= 4 * max(hc.H, hc.W)  # plausible: a size byte may change
        else:
            assert isinstance(value, str) and "\n" not in value
        try:
            read_header(data, Path(f"m.{kind}"), sys.maxsize)
        except ImageError:
            pass


# ---- the real command line --------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unvalidated export (the CLI only has to get as far as reading the content)."""
    from onnxstyle.export.exporter import export
    from onnxstyle.exportdir import ExportSettings

    folder = tmp_path_factory.mktemp("hostile") / "models"
    export(ExportSettings(), folder, validate=False)
    return folder


@pytest.mark.parametrize("name", ["text-as-png", "png-bad-crc", "tiff-cut-33", "png-huge", "eps-as-png", "mode-F16-tiff"])
def test_cli_refuses_in_one_line(name: str, models: Path, tmp_path: Path) -> None:
    case = CASES[name]
    bad = tmp_path / f"bad{case.ext}"
    bad.write_bytes(case.data)
    p = subprocess.run(
        [sys.executable, "-m", "onnxstyle.cli", "stylize", str(bad), str(DATA / "starry_night.png"), "-o",
         str(tmp_path / "out.png"), "--models", str(models), "--size", "32", "--iterations", "1"],
        check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"},
    )
    assert p.returncode == 6, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], p.stderr
    assert p.stdout == ""
    assert not (tmp_path / "out.png").exists()
