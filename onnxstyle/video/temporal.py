"""The per-frame loop of video stylization with temporal consistency (Ruder et al. 2016).

Arrays in, arrays out. Frame t starts from frame t-1's result warped to it by optical flow
and is pulled towards that warped image, pixel by pixel, where the flow is reliable (the
exported loss's temporal term: target image and weight map). Starting close to a converged
image, later frames need fewer evaluations than the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..runtime.image_io import from_nchw
from ..runtime.settings import RunSettings
from .flow import FlowConfig, motion, opencv, warp

if TYPE_CHECKING:  # scipy, under optimize, costs half a second of every CLI start
    from ..runtime.stylizer import Stylizer
    from ..runtime.optimize import Iterate, Result


@dataclass(frozen=True)
class VideoSettings:
    """What makes a video run differ from stylizing its frames one by one."""

    # Ruder 2016's temporal consistency: warped init and the temporal loss term. False
    # stylizes every frame on its own from the run's init (the flickering baseline).
    temporal: bool = True
    # Evaluations for every frame after the first (None: half the first frame's). They start
    # from the previous result warped, which is already close: Ruder et al. ran 2000 then
    # 1000 iterations; benchmarks/results/video.md measures frames per minute and quality.
    later_iterations: int | None = None
    # The optical flow and its reliability check.
    flow: FlowConfig = field(default_factory=FlowConfig)

    def __post_init__(self) -> None:
        if self.later_iterations is not None and self.later_iterations < 1:
            raise ValueError("later iterations must be at least 1")


@dataclass(frozen=True)
class Previous:
    """What the next frame needs from the last one done."""

    content: np.ndarray  # the input frame, RGB float32 HxWx3 in [0,1], at the working size
    output: np.ndarray  # its stylized result, same size


@dataclass(frozen=True)
class FrameIterate:
    """Progress as data: one evaluation of one frame (``iterate`` None when a frame is done)."""

    frame: int  # 0-based index in the clip
    frames: int  # frames in the clip (0: unknown)
    iterate: Iterate | None
    result: Result | None = None


def frame_settings(run: RunSettings, video: VideoSettings, first: bool) -> RunSettings:
    """The run settings of one frame: the given ones for the first (and for every frame
    without temporal consistency), one stage of fewer evaluations after it."""
    if first or not video.temporal:
        return run
    later = video.later_iterations or max(1, run.total_evaluations() // 2)
    # One stage at the output size: a coarse stage would throw away the warped init's detail.
    return run.replace(iterations=later, scales=None, scale_iterations=None, coarse_to_fine_above=0, init="image")


def stylize_frames(
    stylizer: Stylizer,
    frames: Iterable[tuple[int, np.ndarray, Callable[[], np.ndarray] | None]],
    styles: Sequence[np.ndarray],
    run: RunSettings,
    video: VideoSettings,
    total: int = 0,
    progress: Callable[[FrameIterate], None] | None = None,
    previous: Previous | None = None,
) -> Iterator[tuple[int, np.ndarray, Result]]:
    """Stylize a clip in order, yielding (index, stylized RGB HxWx3, result) per frame made.

    ``frames`` gives (index, input frame, loader of its output if already made, else None):
    a frame already made (a resumed run) is not redone, and its output is loaded only when
    the next frame needs it as its previous one. ``previous`` seeds the first frame given
    (a chunk that starts inside a clip). Ctrl-C leaves as :class:`~onnxstyle.errors.Interrupted`
    (nothing kept of the frame in progress: a resumed run redoes it whole)."""
    if video.temporal:
        opencv()  # missing: say so before the first frame's minutes, not after them
    made: tuple[np.ndarray, Callable[[], np.ndarray]] | None = None
    for index, content, load in frames:
        if load is not None:
            made = (content, load)
            continue
        if made is not None:
            previous, made = Previous(made[0], made[1]()), None

        def cb(it: Iterate, index: int = index) -> None:
            if progress is not None:
                progress(FrameIterate(index, total, it))

        settings = frame_settings(run, video, first=previous is None)
        if previous is None or not video.temporal:
            result = stylizer.run(content, list(styles), settings, cb)
        else:  # the previous output warped to this frame, and Ruder's per-pixel weight map c
            m = motion(previous.content, content, video.flow)
            target = warp(previous.output, m.backward)
            result = stylizer.run(content, list(styles), settings, cb, init_image=target, temporal=(target, m.weights))
        out = from_nchw(result.image)
        previous = Previous(content, out)
        if progress is not None:
            progress(FrameIterate(index, total, None, result))
        yield index, out, result
