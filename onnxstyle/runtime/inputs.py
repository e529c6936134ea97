"""A job's inputs at their working sizes, and the metadata its output carries: written once
for every front end (the CLI's stylize and sweep, the batch worker, the service's intake,
video).

An input is a path or bytes already in memory (an upload, an item sent to a Ray actor);
``name`` is what error messages call it. Headers come first (a bomb or a non-image is refused
in milliseconds), then each input is decoded once, at the side it is used at: the content and
its masks at the output size, the styles at :meth:`RunSettings.style_side`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..version import __version__
from .image_io import DEFAULT_MAX_PIXELS, ImageHeader, decode_image, encode_image, fit_longest, from_nchw, read_bytes, read_header, resize_to
from .settings import RunSettings

Source = Union[Path, bytes]


def _data(src: Source) -> bytes:
    return src if isinstance(src, bytes) else read_bytes(Path(src))


def header(src: Source, name: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """The header of a file or of bytes (size, orientation, alpha); a bomb is refused here."""
    return read_header(_data(src), Path(name or (src if not isinstance(src, bytes) else "image")), max_pixels)


def decode(src: Source, side: int | None, name: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB, alpha or None) at longest side ``side``; only ImageError, whatever the input."""
    return decode_image(_data(src), name or (src if not isinstance(src, bytes) else "image"), side, max_pixels)


@dataclass
class Inputs:
    """One run's inputs, decoded: the content (and its alpha) at the output size, the styles at
    their side, masks (greyscale) and the init image at the output size."""

    content: np.ndarray
    alpha: np.ndarray | None
    styles: list[np.ndarray]
    masks: list[np.ndarray] = field(default_factory=list)
    init: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.content.shape[0], self.content.shape[1]


def output_size(content: ImageHeader, settings: RunSettings) -> tuple[int, int]:
    """(height, width) of the result, from the content's header alone (nothing decoded)."""
    return settings.output_size(*content.oriented)


def style_side(settings: RunSettings, hw: tuple[int, int] | None = None) -> int:
    """The side the styles are decoded at: that of the largest stage, or of the output when a
    fit by height makes its longest side exceed --size."""
    return settings.style_side(max(settings.size, *(hw or (0,))))


def planned_sizes(content: ImageHeader, styles: Sequence[ImageHeader], masks: Sequence[ImageHeader], settings: RunSettings) -> tuple[tuple[int, int], list[tuple[int, int]], list[tuple[int, int]]]:
    """(output, styles, masks) sizes as :func:`load` will hold them, from the headers alone."""
    hw = output_size(content, settings)
    side = style_side(settings, hw)
    return hw, [fit_longest(*h.oriented, side) for h in styles], [fit_longest(*h.oriented, max(hw)) for h in masks]


def load(
    content: Source, styles: Sequence[Source], settings: RunSettings, masks: Sequence[Source] = (), init: Source | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, names: Sequence[str] | None = None, style_rgbs: Sequence[np.ndarray] | None = None,
) -> Inputs:
    """Decode every input once, at the size it is used at. ``names``: the content's and the
    styles' labels in messages (bytes have no path); ``style_rgbs``: styles decoded already
    (a batch decodes them once for every item)."""
    labels = list(names or [])
    label = labels[0] if labels else (None if isinstance(content, bytes) else content)
    data = _data(content)  # read once: the header and the decode both need it
    hw = output_size(header(data, label, max_pixels), settings)
    rgb, alpha = decode(data, max(hw), label, max_pixels)
    side = style_side(settings, hw)
    if style_rgbs is None:
        style_rgbs = [decode(s, side, labels[i + 1] if len(labels) > i + 1 else None, max_pixels)[0] for i, s in enumerate(styles)]
    return Inputs(
        rgb, alpha, list(style_rgbs),
        [decode(m, max(hw), None, max_pixels)[0].mean(axis=2) for m in masks],
        decode(init, max(hw), None, max_pixels)[0] if init is not None else None,
    )


def metadata(settings: RunSettings, **fields: Any) -> dict[str, str]:
    """The PNG text of an output: onnxstyle's version, the run's settings, and ``fields`` (the
    inputs' names, evaluations, loss, …), as one JSON chunk that :func:`read_png_text` reads."""
    record = {"onnxstyle": __version__, "settings": settings.to_dict(), **fields}
    return {"onnxstyle": json.dumps(record)}


def result_bytes(image: np.ndarray, ext: str, alpha: np.ndarray | None, settings: RunSettings, **fields: Any) -> bytes:
    """A result (NCHW in [0,1]) encoded as ``ext``, with the content's alpha resized onto it and
    :func:`metadata`."""
    rgb = from_nchw(image)
    if alpha is not None:
        alpha = resize_to(alpha, rgb.shape[0], rgb.shape[1])
    return encode_image(rgb, ext, alpha, metadata(settings, **fields))
