"""How stable and how stylized a stylized clip is.

* Warping error (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018, eq. 8):
  the mean, over pixels where the flow is reliable, of the squared RGB difference between
  output frame t and output frame t-1 warped to it by the flow of the *input* frames; then
  averaged over t. Lai et al. took FlowNet2's flow and Ruder's occlusion check. Here the
  metric's flow is Farnebäck's, deliberately another method than the DIS flow the temporal
  term is built from, so the metric does not merely read back what was optimized; a clip of
  known motion passes its exact flow instead.
* Gram and content distances to the style and the content, from the export's own features,
  so that stability bought with less style shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..runtime.image_io import to_nchw
from ..runtime.settings import RunSettings
from .flow import consistency, opencv, to_gray8, warp

if TYPE_CHECKING:
    from ..runtime.stylizer import Stylizer


# cv2.calcOpticalFlowFarneback's parameters for the metric's flow (OpenCV's documented example
# values, with a 15 px window that holds at 128-512 px frame sizes): pyr_scale, levels, winsize,
# iterations, poly_n, poly_sigma.
FARNEBACK = (0.5, 4, 15, 3, 5, 1.2)


def farneback(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dense flow from ``source`` to ``target`` (RGB float in [0,1]), HxWx2 float32."""
    a, b = to_gray8(source), to_gray8(target)
    flow = opencv().calcOpticalFlowFarneback(a, b, np.zeros((*a.shape, 2), np.float32), *FARNEBACK, 0)
    return np.asarray(flow, np.float32)


def metric_motion(previous: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(backward flow, reliability mask) between two input frames, for the warping error."""
    backward = farneback(current, previous)
    forward = farneback(previous, current)
    return backward, consistency(backward, forward)


def warping_error(previous_out: np.ndarray, current_out: np.ndarray, backward: np.ndarray, mask: np.ndarray) -> float:
    """Lai et al.'s E_warp for one pair: Σ M·‖O_t − warp(O_t-1)‖² / Σ M (RGB in [0,1])."""
    diff = ((current_out - warp(previous_out, backward)) ** 2).sum(axis=-1)
    return float((mask * diff).sum() / max(float(mask.sum()), 1.0))


def clip_warping_errors(
    inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], motions: Sequence[tuple[np.ndarray, np.ndarray]] | None = None
) -> list[float]:
    """E_warp of each consecutive pair of ``outputs`` (len-1 values). ``motions``: the exact
    (backward flow, mask) of each pair, else measured on ``inputs``."""
    errors = []
    for t in range(1, len(outputs)):
        backward, mask = motions[t - 1] if motions is not None else metric_motion(inputs[t - 1], inputs[t])
        errors.append(warping_error(outputs[t - 1], outputs[t], backward, mask))
    return errors


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).sum() / max(float((b**2).sum()), 1e-30))


def style_content_distances(
    stylizer: Stylizer, output: np.ndarray, content: np.ndarray, styles: Sequence[np.ndarray], settings: RunSettings
) -> tuple[float, float]:
    """(Gram distance, content distance) of a stylized frame: ‖G(out) − G(style)‖² / ‖G(style)‖²
    averaged over the export's style layers, and ‖F(out) − F(content)‖² / ‖F(content)‖² at
    its content layers, with the targets built as a run builds them."""
    targets = stylizer.targets(content, styles, settings.replace(size=max(content.shape[:2])), regions=0)
    got = stylizer.engine.features(to_nchw(output))
    grams = [_relative(got[k].reshape(v.shape[-2:]), v.reshape(v.shape[-2:])) for k, v in targets.items() if k.startswith("gram_")]
    contents = [_relative(got[k], targets[k]) for k in targets if k.startswith("content_")]
    return float(np.mean(grams)), float(np.mean(contents))
