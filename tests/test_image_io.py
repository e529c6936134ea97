"""Image files: formats, orientation, alpha, truncation, atomic writes, PNG settings."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxstyle.errors import ImageError, OutputError
from onnxstyle.runtime.image_io import (
    check_output_path,
    fit_longest,
    load_image,
    read_png_text,
    save_image,
)

DATA = Path(__file__).parent / "data"


def reference_rgb() -> np.ndarray:
    bgr = cv2.imread(str(DATA / "tubingen.png"))
    return bgr[:, :, ::-1].astype(np.float32) / 255


def test_png_loads_as_rgb_float() -> None:
    rgb, alpha = load_image(DATA / "tubingen.png")
    assert rgb.dtype == np.float32 and rgb.shape == (72, 96, 3) and alpha is None
    np.testing.assert_allclose(rgb, reference_rgb(), atol=1e-6)


def test_resize_longest_side() -> None:
    rgb, _ = load_image(DATA / "tubingen.png", max_side=48)
    assert rgb.shape == (36, 48, 3)
    assert fit_longest(768, 1024, 512) == (384, 512)
    assert fit_longest(1528, 1200, 100) == (100, 79)


def test_grayscale_sixteen_bit_and_alpha(tmp_path: Path) -> None:
    ref = reference_rgb()
    gray = cv2.cvtColor((ref[:, :, ::-1] * 255).astype(np.uint8), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb, _ = load_image(tmp_path / "g.png")
    assert rgb.shape == (72, 96, 3)
    np.testing.assert_allclose(rgb[:, :, 0], gray / 255, atol=1e-6)
    np.testing.assert_array_equal(rgb[:, :, 0], rgb[:, :, 2])

    sixteen = np.round(ref[:, :, ::-1] * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "16.png"), sixteen)
    rgb16, _ = load_image(tmp_path / "16.png")
    np.testing.assert_allclose(rgb16, ref, atol=1e-4)

    a = np.linspace(0, 255, 96, dtype=np.uint8)[None, :].repeat(72, 0)
    bgra = np.dstack([(ref[:, :, ::-1] * 255).round().astype(np.uint8), a])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    rgb_a, alpha = load_image(tmp_path / "a.png")
    assert alpha is not None
    np.testing.assert_allclose(alpha, a / 255, atol=1e-6)
    np.testing.assert_allclose(rgb_a, ref, atol=1 / 255)


def _exif_orientation_jpeg(bgr: np.ndarray, orientation: int) -> bytes:
    """A JPEG with an APP1 EXIF segment holding only the Orientation tag."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    jpg = buf.tobytes()
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01" + orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00"
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpg[:2] + app1 + jpg[2:]


def test_exif_rotated_jpeg_is_shown_as_a_viewer_shows_it(tmp_path: Path) -> None:
    bgr = cv2.imread(str(DATA / "tubingen.png"))
    (tmp_path / "r.jpg").write_bytes(_exif_orientation_jpeg(bgr, 6))  # 6: rotate 90° clockwise to view
    rgb, _ = load_image(tmp_path / "r.jpg")
    assert rgb.shape == (96, 72, 3)
    expected = np.rot90(reference_rgb(), k=-1)
    assert np.abs(rgb - expected).mean() < 0.02


def test_cmyk_and_palette(tmp_path: Path) -> None:
    PIL = pytest.importorskip("PIL.Image", reason="Pillow writes the CMYK/palette fixtures")
    ref = (reference_rgb() * 255).round().astype(np.uint8)
    PIL.fromarray(ref).convert("CMYK").save(tmp_path / "c.jpg", quality=98)
    rgb, _ = load_image(tmp_path / "c.jpg")
    assert rgb.shape == (72, 96, 3) and np.abs(rgb - ref / 255).mean() < 0.05
    PIL.fromarray(ref).convert("P", palette=PIL.Palette.ADAPTIVE, colors=64).save(tmp_path / "p.png")
    rgb, _ = load_image(tmp_path / "p.png")
    assert rgb.shape == (72, 96, 3) and np.abs(rgb - ref / 255).mean() < 0.05


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"hello, not an image", "not an image"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=match):
        load_image(p)


def test_missing_and_truncated(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    for ext in (".jpg", ".png"):
        ok, buf = cv2.imencode(ext, cv2.imread(str(DATA / "tubingen.png")))
        data = buf.tobytes()
        p = tmp_path / f"t{ext}"
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match="truncated"):
            load_image(p)


def test_huge_jpeg_is_decoded_reduced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import JpegImagePlugin

    big = cv2.resize(cv2.imread(str(DATA / "tubingen.png")), (4000, 3000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    seen: list[int] = []
    real = JpegImagePlugin.JpegImageFile.load

    def spy(self):  # type: ignore[no-untyped-def]
        out = real(self)
        seen.append(max(self.size))
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    rgb, _ = load_image(tmp_path / "big.jpg", max_side=400)
    assert max(rgb.shape[:2]) == 400
    assert seen and seen[-1] == 500  # decoded at 1/8 scale, not 4000 px


def test_save_png_with_settings_and_alpha(tmp_path: Path) -> None:
    rgb = reference_rgb()
    alpha = np.linspace(0, 1, 96, dtype=np.float32)[None].repeat(72, 0)
    p = tmp_path / "o.png"
    save_image(p, rgb, alpha, {"onnxstyle": '{"style_weight": 100}'})
    assert read_png_text(p) == {"onnxstyle": '{"style_weight": 100}'}
    back = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert back.shape == (72, 96, 4)
    np.testing.assert_allclose(back[:, :, 3] / 255, alpha, atol=1 / 255)
    np.testing.assert_allclose(back[:, :, 2::-1] / 255, rgb, atol=1 / 255)
    for ext in (".jpg", ".webp"):
        save_image(tmp_path / f"o{ext}", rgb)
        assert cv2.imread(str(tmp_path / f"o{ext}")).shape == (72, 96, 3)


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "o.png"
    save_image(p, reference_rgb())
    before = p.read_bytes()

    def crash(*a, **k):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OutputError, match="No space"):
        save_image(p, np.zeros((72, 96, 3), np.float32))
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["o.png"]


def test_refuses_nan_pixels(tmp_path: Path) -> None:
    img = reference_rgb().copy()
    img[0, 0, 0] = np.nan
    with pytest.raises(OutputError, match="NaN"):
        save_image(tmp_path / "o.png", img)
    assert not (tmp_path / "o.png").exists()


def test_output_path_checks(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="unknown output format"):
        check_output_path(tmp_path / "o.gif")
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "o.png")
    src = tmp_path / "in.png"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="also an input"):
        check_output_path(src, [src])
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "afile" / "o.png")
    assert check_output_path(tmp_path / "fine.webp") == tmp_path / "fine.webp"


def test_the_working_size_comes_from_the_header_not_a_reduced_decode(tmp_path: Path) -> None:
    """A JPEG decoded at 1/2 or 1/4 scale is resized to the fit of its full size: 1024x341 at
    256 px is 256x85 as every front end computes it (the 1/2 decode, 512x171, would give 86)."""
    from PIL import Image as PILImage

    from onnxstyle.runtime.image_io import fit_longest, load_image

    rng = np.random.default_rng(0)
    for w, h in ((1024, 341), (221, 662), (1024, 410), (691, 768)):
        p = tmp_path / f"p{w}x{h}.jpg"
        PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        assert load_image(p, 256)[0].shape[:2] == fit_longest(h, w, 256)
