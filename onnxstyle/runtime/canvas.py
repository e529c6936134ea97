"""Few shapes, few compiles: a photo's working size snapped to a small grid of canvases.

OpenVINO (and TensorRT) compile the loss graph once per input shape: a service or batch
over users' photos, where every aspect ratio is a new shape, would compile a new engine
for nearly every photo, and cache each. With the grid, a stage of longest side L runs on
one of four canvases, whatever the photo:

    L × L,   3L/4 × L and 9L/16 × L (landscape: 4:3 and 16:9),   L × 3L/4 (portrait)

The photo sits in the middle of the smallest canvas that holds it, the margin filled by
mirroring it (so the network sees a continuation of the picture, not a black frame). The
style term is measured over the photo only (the guide is 0 on the margin, so the Grams are
the photo's); the content and TV terms are taken over the canvas with their weights
scaled by canvas/photo area, so that they weigh against the style as in a run at the exact
size (the margin, a mirror of the content, adds next to nothing to the content term). The
result is cropped back: the output has exactly the requested size. The loss a run reports
is this canvas loss.

Costs: up to a third more pixels per evaluation for a 16:9 portrait or a 5:4 photo, none
for 4:3, 16:9 landscape or square ones (benchmarks/results/shapes.md measures compiles,
seconds and cache bytes for 20 aspect ratios).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Short side / long side of the canvases, per orientation.
LANDSCAPE = (9 / 16, 3 / 4, 1.0)
PORTRAIT = (3 / 4, 1.0)


def canvas_for(height: int, width: int) -> tuple[int, int]:
    """The smallest grid canvas (H, W) that holds an image of ``height`` × ``width``."""
    long_side, short = max(height, width), min(height, width)
    ratios = LANDSCAPE if width >= height else PORTRAIT
    side = next(s for s in (math.ceil(r * long_side) for r in ratios) if s >= short)
    return (side, long_side) if width >= height else (long_side, side)


@dataclass(frozen=True)
class Canvas:
    """Where a photo of ``hw`` sits in a canvas of ``canvas``; identity when they are equal."""

    hw: tuple[int, int]
    canvas: tuple[int, int]

    @property
    def snapped(self) -> bool:
        return self.hw != self.canvas

    @property
    def area_ratio(self) -> float:
        return (self.canvas[0] * self.canvas[1]) / (self.hw[0] * self.hw[1])

    def _margins(self) -> tuple[tuple[int, int], tuple[int, int]]:
        (h, w), (ch, cw) = self.hw, self.canvas
        return ((ch - h) // 2, ch - h - (ch - h) // 2), ((cw - w) // 2, cw - w - (cw - w) // 2)

    def pad(self, x: np.ndarray, mirror: bool = True) -> np.ndarray:
        """An NCHW array at ``hw`` onto the canvas: mirrored into the margin, or zeros there."""
        if not self.snapped:
            return x
        rows, cols = self._margins()
        out = np.pad(x, ((0, 0), (0, 0), rows, cols), mode="reflect" if mirror else "constant")
        return np.ascontiguousarray(out, dtype=np.float32)

    def crop(self, x: np.ndarray) -> np.ndarray:
        """The photo's region of an NCHW canvas array."""
        if not self.snapped:
            return x
        (top, _), (left, _) = self._margins()
        h, w = self.hw
        return np.ascontiguousarray(x[:, :, top : top + h, left : left + w])
