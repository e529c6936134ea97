"""Colour control (Gatys et al. 2017), checked against measures taken independently of the
module: numpy moments and OpenCV's YCrCb conversion."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxstyle.runtime.colour import (
    luminance_image,
    match_histogram,
    match_luminance,
    recombine_luminance,
    rgb_to_yiq,
    yiq_to_rgb,
)
from onnxstyle.runtime.image_io import load_image

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def content() -> np.ndarray:
    return load_image(DATA / "tubingen.png")[0]


@pytest.fixture(scope="module")
def style() -> np.ndarray:
    return load_image(DATA / "starry_night.png")[0]


def ycrcb(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2YCrCb)


def moments(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    px = rgb.reshape(-1, 3).astype(np.float64)
    return px.mean(axis=0), np.cov(px, rowvar=False, bias=True)


def test_yiq_round_trip(content: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for rgb in (content, rng.random((17, 23, 3), dtype=np.float32)):
        yiq = rgb_to_yiq(rgb)
        assert yiq.dtype == np.float32 and yiq.shape == rgb.shape
        np.testing.assert_allclose(yiq_to_rgb(yiq), rgb, atol=1e-5)


def test_yiq_known_values() -> None:
    # White has full luminance and no chroma; pure red is the first column of the NTSC matrix.
    np.testing.assert_allclose(rgb_to_yiq(np.ones(3, np.float32)), [1.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(rgb_to_yiq(np.array([1, 0, 0], np.float32)), [0.299, 0.595716, 0.211456], atol=1e-6)


def test_yiq_y_matches_opencv_luma(content: np.ndarray) -> None:
    np.testing.assert_allclose(rgb_to_yiq(content)[..., 0], ycrcb(content)[..., 0], atol=1e-4)


def test_wrong_channel_count_rejected() -> None:
    with pytest.raises(ValueError):
        rgb_to_yiq(np.zeros((4, 4, 4), np.float32))


def test_match_histogram_moments(style: np.ndarray, content: np.ndarray) -> None:
    out = match_histogram(style, content, clip=False)
    assert out.shape == style.shape and out.dtype == np.float32
    mu_o, cov_o = moments(out)
    mu_c, cov_c = moments(content)
    np.testing.assert_allclose(mu_o, mu_c, atol=1e-4)
    np.testing.assert_allclose(cov_o, cov_c, atol=1e-4)
    # The transform must actually have changed something: the style's moments were far off.
    assert np.abs(moments(style)[1] - cov_c).max() > 1e-3


def test_match_histogram_clipped(style: np.ndarray, content: np.ndarray) -> None:
    out = match_histogram(style, content)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # These images need almost no clipping, so the clipped result still matches closely.
    np.testing.assert_allclose(moments(out)[0], moments(content)[0], atol=1e-3)


def test_match_histogram_self_is_identity(content: np.ndarray) -> None:
    np.testing.assert_allclose(match_histogram(content, content, clip=False), content, atol=1e-4)


def test_match_histogram_flat_style(content: np.ndarray) -> None:
    flat = np.full((8, 8, 3), 0.3, np.float32)
    out = match_histogram(flat, content, clip=False)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np.broadcast_to(moments(content)[0], out.shape), atol=1e-5)


def test_luminance_image_is_grey_luma(content: np.ndarray) -> None:
    grey = luminance_image(content)
    assert grey.shape == content.shape and grey.dtype == np.float32
    y = ycrcb(content)[..., 0]
    for ch in range(3):
        np.testing.assert_allclose(grey[..., ch], y, atol=1e-4)


def test_match_luminance_statistics(style: np.ndarray, content: np.ndarray) -> None:
    out = match_luminance(style, content)
    assert out.shape == style.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out.min() >= 0.0 and out.max() <= 1.0
    y_out = ycrcb(out)[..., 0].astype(np.float64)
    y_c = ycrcb(content)[..., 0].astype(np.float64)
    assert abs(y_out.mean() - y_c.mean()) < 2e-3
    assert abs(y_out.std() - y_c.std()) < 2e-3
    # The texture still comes from the style: the matched Y is an increasing affine map of it.
    y_s = ycrcb(style)[..., 0].ravel()
    assert np.corrcoef(y_s, y_out.ravel())[0, 1] > 0.99


def test_match_luminance_flat_style(content: np.ndarray) -> None:
    out = match_luminance(np.full((5, 6, 3), 0.7, np.float32), content)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ycrcb(content)[..., 0].mean(), atol=1e-4)


def test_recombine_keeps_content_chroma_and_stylized_luma(style: np.ndarray, content: np.ndarray) -> None:
    h, w = content.shape[:2]
    # A luminance-only result is grey; stand in for it with the style's luminance at content size.
    stylized = luminance_image(cv2.resize(style, (w, h), interpolation=cv2.INTER_AREA))
    out = recombine_luminance(stylized, content)
    assert out.shape == content.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    got, want_c, want_s = ycrcb(out), ycrcb(content), ycrcb(stylized)
    assert np.abs(got[..., 1:] - want_c[..., 1:]).mean() < 0.02
    assert np.abs(got[..., 0] - want_s[..., 0]).mean() < 0.02
    # Not trivially the content: the luminance really changed.
    assert np.abs(got[..., 0] - want_c[..., 0]).mean() > 0.05


def test_recombine_shape_mismatch(content: np.ndarray) -> None:
    with pytest.raises(ValueError):
        recombine_luminance(content[:-1], content)
