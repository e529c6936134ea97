"""Colour control for style transfer (Gatys et al. 2017, "Controlling Perceptual Factors
in Neural Style Transfer"): luminance-only transfer and colour histogram matching.

Both methods keep the content's colours while taking the style's texture:

* luminance-only: optimise on grey images (the content's luminance and the style's
  luminance matched to it), then put the content's chroma back on the result;
* histogram matching: recolour the style image so that its pixels have the content's
  mean and covariance, then transfer as usual.

All arrays are RGB float32 ``HxWx3`` in [0, 1] unless said otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "luminance_image",
    "match_histogram",
    "match_luminance",
    "recombine_luminance",
    "rgb_to_yiq",
    "yiq_to_rgb",
]

# NTSC (FCC 1953) RGB -> YIQ. Y uses the same Rec. 601 weights as OpenCV's YCrCb, so
# "luminance" means the same thing whichever library measures it.
_RGB_TO_YIQ = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ],
    dtype=np.float64,
)
# Inverted numerically rather than using the rounded published inverse, which only
# round-trips to about 1e-3.
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _check_three_channels(name: str, img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have 3 channels in its last axis, got shape {arr.shape}")
    return arr


def _apply(matrix: np.ndarray, img: np.ndarray) -> np.ndarray:
    # float64 internally so that chained conversions (rgb -> yiq -> rgb) add no error
    # beyond the final cast to float32.
    out = img.astype(np.float64, copy=False) @ matrix.T
    return out.astype(np.float32)


def rgb_to_yiq(rgb: np.ndarray) -> np.ndarray:
    """RGB ``...x3`` -> YIQ ``...x3`` (float32); Y in [0, 1], I and Q signed."""
    return _apply(_RGB_TO_YIQ, _check_three_channels("rgb", rgb))


def yiq_to_rgb(yiq: np.ndarray) -> np.ndarray:
    """YIQ ``...x3`` -> RGB ``...x3`` (float32), not clipped: the exact inverse of ``rgb_to_yiq``."""
    return _apply(_YIQ_TO_RGB, _check_three_channels("yiq", yiq))


def _grey(y: np.ndarray) -> np.ndarray:
    # The network expects three channels; a grey image carries Y equally in each.
    return np.repeat(y[..., None], 3, axis=-1).astype(np.float32)


def luminance_image(rgb: np.ndarray) -> np.ndarray:
    """The luminance Y of ``rgb`` replicated into 3 channels (what luminance-only mode optimises)."""
    return _grey(rgb_to_yiq(rgb)[..., 0])


def match_luminance(style_rgb: np.ndarray, content_rgb: np.ndarray) -> np.ndarray:
    """The style's luminance as a grey 3-channel image, affinely matched to the content's.

    ``Y' = (Y_s - mean_s) * std_c / std_s + mean_c``, clipped to [0, 1]. Without this a dark
    style would darken the result and a low-contrast one would flatten it: the luminance
    statistics should come from the content, only the texture from the style.
    """
    y_s = rgb_to_yiq(style_rgb)[..., 0].astype(np.float64)
    y_c = rgb_to_yiq(content_rgb)[..., 0].astype(np.float64)
    mean_s, std_s = float(y_s.mean()), float(y_s.std())
    mean_c, std_c = float(y_c.mean()), float(y_c.std())
    # A flat style has no contrast to rescale: every pixel becomes the content's mean.
    scale = std_c / std_s if std_s > 1e-12 else 0.0
    matched = (y_s - mean_s) * scale + mean_c
    return _grey(np.clip(matched, 0.0, 1.0))


def recombine_luminance(stylized_rgb: np.ndarray, content_rgb: np.ndarray) -> np.ndarray:
    """Y of the (luminance-only) stylised result with I and Q of the content, as RGB in [0, 1].

    The stylised image is grey in luminance-only mode; its chroma is meaningless, so the
    content's colours are put back on it here.
    """
    stylized = _check_three_channels("stylized_rgb", stylized_rgb)
    content = _check_three_channels("content_rgb", content_rgb)
    if stylized.shape != content.shape:
        raise ValueError(f"stylized {stylized.shape} and content {content.shape} must have the same shape")
    yiq = rgb_to_yiq(content)
    yiq[..., 0] = rgb_to_yiq(stylized)[..., 0]
    return np.clip(yiq_to_rgb(yiq), 0.0, 1.0)


def _sym_power(cov: np.ndarray, power: float) -> np.ndarray:
    """cov**power for a symmetric positive (semi)definite matrix, via eigendecomposition."""
    values, vectors = np.linalg.eigh(cov)
    # Round-off can leave tiny negative eigenvalues; they would make the power NaN.
    values = np.maximum(values, np.finfo(np.float64).tiny)
    return (vectors * values**power) @ vectors.T


def match_histogram(
    style_rgb: np.ndarray, content_rgb: np.ndarray, eps: float = 1e-5, *, clip: bool = True
) -> np.ndarray:
    """Recolour the style so that its pixels have the content's mean and covariance.

    ``x' = A (x - mu_s) + mu_c`` with ``A = Sigma_c^{1/2} Sigma_s^{-1/2}`` (symmetric square
    roots), so ``A Sigma_s A^T = Sigma_c``. ``eps * I`` is added to both covariances so
    that a style with (almost) no variation in some colour direction does not blow up;
    that makes the match exact only up to about ``eps``. Covariances are population ones
    (divided by N). The result has the style's shape, clipped to [0, 1] unless
    ``clip=False`` (the transform itself can leave the gamut).
    """
    style = _check_three_channels("style_rgb", style_rgb)
    content = _check_three_channels("content_rgb", content_rgb)
    xs = style.reshape(-1, 3).astype(np.float64)
    xc = content.reshape(-1, 3).astype(np.float64)
    if xs.shape[0] == 0 or xc.shape[0] == 0:
        raise ValueError("style and content must have at least one pixel")
    mu_s, mu_c = xs.mean(axis=0), xc.mean(axis=0)
    ds, dc = xs - mu_s, xc - mu_c
    ridge = eps * np.eye(3)
    cov_s = ds.T @ ds / xs.shape[0] + ridge
    cov_c = dc.T @ dc / xc.shape[0] + ridge
    a = _sym_power(cov_c, 0.5) @ _sym_power(cov_s, -0.5)
    out = (ds @ a.T + mu_c).reshape(style.shape)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)
