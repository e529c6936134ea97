"""A long clip split into overlapping chunks that run in parallel (``video --ray``).

Each chunk is stylized in order with temporal consistency from its own first frame; two
neighbouring chunks share ``overlap`` frames, where their outputs are cross-faded linearly so
that the seam is a gradual hand-over rather than a jump. Arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..runtime.settings import RunSettings
from .temporal import VideoSettings, stylize_frames

if TYPE_CHECKING:
    from ..runtime.stylizer import Stylizer


@dataclass(frozen=True)
class ChunkPlan:
    """How a clip is cut for parallel runs."""

    # Frames per chunk: long enough that the first frame's full iterations are a small part
    # of a chunk's cost, short enough to spread a clip of a few hundred frames over a cluster.
    length: int = 24
    # Frames shared by neighbouring chunks and cross-faded: with n of them each step of the
    # hand-over carries about 1/(n+1) of the jump between the two chunks' own starts; the
    # border's warping error is measured in benchmarks/results/video.md.
    overlap: int = 4

    def __post_init__(self) -> None:
        if self.length < 2 or self.overlap < 1:
            raise ValueError("chunks need at least 2 frames and an overlap of at least 1")
        if 2 * self.overlap >= self.length:
            raise ValueError(f"overlap {self.overlap} must be under half the chunk length {self.length}")


def chunk_ranges(frames: int, plan: ChunkPlan) -> list[range]:
    """The frame ranges of the chunks covering ``frames`` frames; neighbours share ``overlap``."""
    out: list[range] = []
    start = 0
    while True:
        stop = min(start + plan.length, frames)
        out.append(range(start, stop))
        if stop >= frames:
            return out
        start = stop - plan.overlap


def covering(frame: int, chunks: Sequence[range]) -> list[int]:
    """Indices of the chunks that hold ``frame`` (one, or two in an overlap)."""
    return [k for k, c in enumerate(chunks) if frame in c]


def blend(frame: int, chunks: Sequence[range], outputs: dict[int, np.ndarray]) -> np.ndarray:
    """The output of ``frame`` from the chunks holding it (``outputs``: chunk index → image).
    In an overlap the later chunk's weight rises linearly from 1/(n+1) to n/(n+1)."""
    ks = covering(frame, chunks)
    if len(ks) == 1:
        return outputs[ks[0]]
    a, b = ks
    shared = chunks[a].stop - chunks[b].start
    alpha = (frame - chunks[b].start + 1) / (shared + 1)
    return ((1.0 - alpha) * outputs[a] + alpha * outputs[b]).astype(np.float32)


def stylize_chunked(
    stylizer: Stylizer, frames: Sequence[np.ndarray], styles: Sequence[np.ndarray], run: RunSettings, video: VideoSettings, plan: ChunkPlan
) -> list[np.ndarray]:
    """The chunked result computed in this process, chunk after chunk: what ``video --ray``
    produces, for measuring the seams without a cluster."""
    chunks = chunk_ranges(len(frames), plan)
    per_chunk: list[dict[int, np.ndarray]] = []
    for c in chunks:
        given = ((i, frames[f], None) for i, f in enumerate(c))
        outs = [out for _, out, _ in stylize_frames(stylizer, given, styles, run, video)]
        per_chunk.append(dict(zip(c, outs, strict=True)))
    return [blend(f, chunks, {k: per_chunk[k][f] for k in covering(f, chunks)}) for f in range(len(frames))]
