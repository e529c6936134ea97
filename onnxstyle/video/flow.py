"""Optical flow between frames, where it can be trusted, and warping by it (Ruder et al. 2016).

Arrays in, arrays out. A flow field is float32 HxWx2 holding, for each pixel of the image it
belongs to, the (dx, dy) displacement to where that pixel is in the other image. Warping the
previous frame to the current one therefore uses the *backward* flow (current → previous):
``warped(p) = previous(p + backward(p))``.

Reliability follows Ruder, Dosovitskiy and Brox, "Artistic style transfer for videos"
(GCPR 2016), section 3.2: a pixel is unreliable where the forward flow, warped to the current
frame, is not close to the opposite of the backward flow (a disocclusion), or where the
backward flow changes sharply (a motion boundary). Pixels whose flow points outside the
previous frame have no source at all and are unreliable too.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from ..errors import MissingDependencyError


def opencv() -> ModuleType:
    """cv2, imported on first use: it comes with the video extra only (150 MB the lean
    install leaves out), and the CLI imports this module for every command."""
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("video needs opencv for the optical flow: pip install 'onnxstyle[video]'") from None
    return cv2


@dataclass(frozen=True)
class FlowConfig:
    """DIS optical flow and the consistency check's thresholds."""

    # DIS preset: MEDIUM is the most accurate of OpenCV's three; flow costs milliseconds per
    # frame at the sizes stylization runs at, against seconds for the optimization.
    preset: int = 2  # cv2.DISOPTICAL_FLOW_PRESET_MEDIUM (cv2 is not imported until used)
    # The pyramid level DIS stops at: 0 = full resolution. MEDIUM's own 1 (half size) left a
    # 95th-percentile error of 0.03-0.14 px on known pans at 256x192, full resolution 0.001 px,
    # for 60 ms instead of 25 ms per frame pair (both directions) on 2 cores.
    finest_scale: int = 0
    # Ruder 2016, eq. (disocclusion): |w̃ + ŵ|² > a·(|w̃|² + |ŵ|²) + b.
    occlusion_a: float = 0.01
    occlusion_b: float = 0.5
    # Ruder 2016, eq. (motion boundary): |∇û|² + |∇v̂|² > a·|ŵ|² + b.
    boundary_a: float = 0.01
    boundary_b: float = 0.002


@dataclass(frozen=True)
class Motion:
    """How the previous frame maps onto the current one."""

    backward: np.ndarray  # HxWx2: current pixel → its position in the previous frame
    forward: np.ndarray  # HxWx2: previous pixel → its position in the current frame
    weights: np.ndarray  # HxW float32: 1 where the warp is reliable, 0 elsewhere (Ruder's c)


def to_gray8(rgb: np.ndarray) -> np.ndarray:
    """RGB float in [0,1] (or uint8) → 8-bit grey, which DIS takes; grey uint8 as it is."""
    if rgb.ndim == 2 and rgb.dtype == np.uint8:
        return rgb
    img = rgb if rgb.dtype == np.uint8 else np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    cv2 = opencv()
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)


def dis_flow(source: np.ndarray, target: np.ndarray, config: FlowConfig = FlowConfig()) -> np.ndarray:
    """Dense flow from ``source`` to ``target`` (RGB or grey images of the same size)."""
    dis = opencv().DISOpticalFlow.create(config.preset)
    dis.setFinestScale(config.finest_scale)
    a, b = to_gray8(source), to_gray8(target)
    return np.asarray(dis.calc(a, b, np.zeros((*a.shape, 2), np.float32)), np.float32)


def _maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at p + flow(p): the previous frame brought to the current one when
    ``flow`` is the backward flow. Outside the image the nearest edge pixel is used (those
    pixels are unreliable anyway and get zero weight)."""
    mx, my = _maps(flow)
    cv2 = opencv()
    out = cv2.remap(np.ascontiguousarray(image, np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(image.shape)


def inside(flow: np.ndarray) -> np.ndarray:
    """Whether p + flow(p) lies in the other image (bilinear sampling needs its neighbours)."""
    h, w = flow.shape[:2]
    mx, my = _maps(flow)
    return (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)


def consistency(backward: np.ndarray, forward: np.ndarray, config: FlowConfig = FlowConfig()) -> np.ndarray:
    """Ruder's weight map c for the current frame: 1 where the backward flow is trusted."""
    fwd_warped = warp(forward, backward)  # w̃: the forward flow seen from the current frame
    total = fwd_warped + backward
    sq = lambda f: (f**2).sum(axis=-1)  # noqa: E731
    disoccluded = sq(total) > config.occlusion_a * (sq(fwd_warped) + sq(backward)) + config.occlusion_b
    grad_sq = sum(d**2 for c in (0, 1) for d in np.gradient(backward[..., c]))  # |∇û|² + |∇v̂|²
    boundary = grad_sq > config.boundary_a * sq(backward) + config.boundary_b
    reliable = ~disoccluded & ~boundary & inside(backward)
    return reliable.astype(np.float32)


def motion(previous: np.ndarray, current: np.ndarray, config: FlowConfig = FlowConfig()) -> Motion:
    """Flow in both directions between two frames (RGB in [0,1] or grey uint8) and its
    reliability on the current frame."""
    a, b = to_gray8(previous), to_gray8(current)
    backward = dis_flow(b, a, config)
    forward = dis_flow(a, b, config)
    return Motion(backward, forward, consistency(backward, forward, config))
