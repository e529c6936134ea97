"""A video job over files: input clip or frame folder in, stylized frames written one by one
into a work folder, the video assembled at the end.

Every frame is written atomically as soon as it is done, so Ctrl-C loses at most the frame
in progress and a rerun of the same command resumes after the last frame written. The work
folder is OUT itself when OUT is a folder, else ``.OUT.onnxstyle-frames`` beside the video.
It holds a record of what made its frames (``onnxstyle-video.json``): a rerun with other
settings is refused rather than mixing two stylizations in one clip.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..version import __version__
from ..errors import ImageError, OptimizationError, OutputError
from ..runtime import inputs
from ..runtime.image_io import DEFAULT_MAX_PIXELS, save_image, write_atomic
from ..runtime.settings import RunSettings
from . import io as vio
from .chunks import ChunkPlan, blend, chunk_ranges, covering
from .temporal import FrameIterate, VideoSettings, stylize_frames

if TYPE_CHECKING:
    from ..runtime.stylizer import Stylizer

RECORD = "onnxstyle-video.json"


@dataclass
class VideoStats:
    """What a run did: frames made now and found done, evaluations and time."""

    made: int = 0
    reused: int = 0
    evaluations: int = 0
    seconds: float = 0.0

    def add(self, seconds: float, evaluations: int) -> None:
        self.made += 1
        self.evaluations += evaluations
        self.seconds += seconds

    @property
    def frames_per_minute(self) -> float:
        return 60.0 * self.made / max(self.seconds, 1e-9)


@dataclass
class VideoJob:
    """One clip (file or frame folder), one or more styles, one output (video or folder)."""

    input: Path
    styles: list[Path]
    output: Path
    settings: RunSettings
    video: VideoSettings = field(default_factory=VideoSettings)
    max_frames: int | None = None
    folder_fps: Fraction = Fraction(25)
    max_pixels: int = DEFAULT_MAX_PIXELS
    keep_frames: bool = False
    info: vio.VideoInfo | None = None
    height: int = 0
    width: int = 0
    frames: int = 0
    style_rgbs: list[np.ndarray] = field(default_factory=list)

    @property
    def to_video(self) -> bool:
        return vio.is_video_file(self.output)

    @property
    def work(self) -> Path:
        return self.output.parent / f".{self.output.name}.onnxstyle-frames" if self.to_video else self.output

    def check_paths(self) -> None:
        """Refuse an output that cannot be written before any minute is spent on it."""
        if self.output.suffix and not self.to_video and not self.output.is_dir():
            kinds = ", ".join(vio.VIDEO_ENCODERS)
            raise OutputError(f"{self.output}: unknown video format {self.output.suffix}; use {kinds}, or a folder for frames")
        parent = self.output.parent if str(self.output.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"{self.output}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{self.output}: folder {parent} is not writable")
        if self.output.exists() and self.to_video == self.output.is_dir():
            raise OutputError(f"{self.output}: exists and is a {'folder' if self.output.is_dir() else 'file'}")
        if self.output.resolve() == self.input.resolve():
            raise OutputError(f"{self.output}: is also the input; writing it would destroy the input")

    def prepare(self, models_id: str, restart: bool = False) -> list[int]:
        """Probe the input, fix the frame size, and open the work folder; returns the frames
        already done there (a resumed run). ``models_id`` names the export the frames need."""
        self.info = vio.probe(self.input, self.folder_fps, self.max_pixels)
        h, w = self.settings.output_size(self.info.height, self.info.width)
        self.height, self.width = vio.even_size(h, w) if self.to_video else (h, w)
        self.settings = _at_size(self.settings, self.height, self.width)
        available = self.info.frames or (self.max_frames or 0)
        self.frames = min(available, self.max_frames) if self.max_frames else available
        if self.frames == 0:
            raise ImageError(f"{self.input}: the number of frames is unknown; give --max-frames")
        record = self._record(models_id)
        self._open_work(record, restart)
        return [i for i in vio.done_frames(self.work) if i < self.frames]

    def _record(self, models_id: str) -> dict[str, Any]:
        """What determines the pixels of the frames (not threads, devices or frame counts)."""
        return {
            "onnxstyle": __version__,
            "input": str(self.input.resolve()),
            "styles": [str(p.resolve()) for p in self.styles],
            "models": models_id,
            "size": [self.height, self.width],
            "fps": str(self.info.fps if self.info else ""),
            "settings": self.settings.to_dict(),
            "video": json.loads(json.dumps(dataclasses.asdict(self.video))),
        }

    def _open_work(self, record: dict[str, Any], restart: bool) -> None:
        path = self.work / RECORD
        if self.work.is_dir():
            if restart:
                for i in vio.done_frames(self.work):
                    vio.frame_path(self.work, i).unlink()
            elif path.is_file():
                old = json.loads(path.read_text())
                differ = sorted(k for k in record if k != "onnxstyle" and old.get(k) != record[k])
                if differ:
                    raise OutputError(
                        f"{self.work} holds frames made with other {', '.join(differ)}; "
                        f"pass --restart to discard them, or choose another output"
                    )
            elif any(self.work.iterdir()):
                raise OutputError(f"{self.work}: not empty and not an onnxstyle video folder; choose another output")
        self.work.mkdir(parents=False, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=1).encode())

    def load_styles(self) -> None:
        side = inputs.style_side(self.settings, (self.height, self.width))
        self.style_rgbs = [inputs.decode(p, side, max_pixels=self.max_pixels)[0] for p in self.styles]

    def source(self, start: int = 0) -> Iterator[np.ndarray]:
        assert self.info is not None, "prepare() first"
        frames = vio.read_frames(self.info, self.height, self.width, start, self.max_pixels)
        for _, rgb in zip(range(start, self.frames), frames):  # noqa: B905 - the clip may hold more
            yield rgb

    def write_frame(self, index: int, rgb: np.ndarray) -> None:
        meta = inputs.metadata(self.settings, frame=index, fps=str(self.info.fps if self.info else ""), source=str(self.input))
        save_image(vio.frame_path(self.work, index), rgb, text=meta)

    def run(self, stylizer: Stylizer, progress: Callable[[FrameIterate], None] | None = None) -> VideoStats:
        """Stylize every frame not yet in the work folder, in order, writing each when done."""
        done = set(vio.done_frames(self.work))
        stats = VideoStats(reused=len([i for i in done if i < self.frames]))

        seen = 0

        def frames() -> Iterator[tuple[int, np.ndarray, Callable[[], np.ndarray] | None]]:
            nonlocal seen
            for i, rgb in enumerate(self.source()):
                seen = i + 1
                yield i, rgb, functools.partial(vio.read_frame, self.work, i) if i in done else None

        t0 = time.perf_counter()
        for i, out, result in stylize_frames(stylizer, frames(), self.style_rgbs, self.settings, self.video, self.frames, progress):
            self.write_frame(i, out)
            elapsed = time.perf_counter() - t0
            t0 += elapsed
            stats.add(elapsed, result.evaluations)
        # A container can claim more frames than its stream holds: the clip ends where decoding does.
        self.frames = min(self.frames, seen)
        return stats

    def run_chunks(self, pool: Any, plan: ChunkPlan, report: Callable[[str], None]) -> VideoStats:
        """The clip in overlapping chunks on a pool of workers (Ray actors): each chunk runs in
        order with temporal consistency, the overlaps are cross-faded, and each frame is
        written as soon as every chunk holding it is back. Chunks whose frames are all in the
        work folder are skipped; a failed chunk is reported and the others go on."""
        chunks = chunk_ranges(self.frames, plan)
        done = {i for i in vio.done_frames(self.work) if i < self.frames}
        todo = [k for k, c in enumerate(chunks) if any(f not in done for f in c)]
        stats = VideoStats(reused=len(done))
        pieces: dict[int, dict[int, np.ndarray]] = {}
        failed: list[str] = []
        t0 = time.perf_counter()
        for n, (k, got) in enumerate(pool.map_unordered("chunk", self._chunk_tasks(chunks, todo)), start=1):
            c = chunks[k]
            if isinstance(got, BaseException):
                failed.append(f"chunk {k + 1} (frames {c.start}-{c.stop - 1}): {_last_line(got)}")
                report(f"chunk {n}/{len(todo)} failed: {failed[-1]}")
                continue
            outs, evaluations = got
            stats.evaluations += evaluations
            for f, rgb in zip(c, outs, strict=True):
                if f in done:
                    continue
                pieces.setdefault(f, {})[k] = rgb.astype(np.float32) / 255.0
                if all(j in pieces[f] for j in covering(f, chunks)):
                    self.write_frame(f, blend(f, chunks, pieces.pop(f)))
                    done.add(f)
                    stats.made += 1
            report(f"chunk {n}/{len(todo)} done: frames {c.start}-{c.stop - 1}, {len(done)}/{self.frames} frames written")
        stats.seconds = time.perf_counter() - t0
        if failed:
            raise OptimizationError(f"{len(failed)} chunk(s) failed, the others' frames are kept (rerun to retry): {'; '.join(failed)}")
        return stats

    def _chunk_tasks(self, chunks: list[range], todo: list[int]) -> Iterator[tuple[int, tuple[np.ndarray, VideoSettings]]]:
        """(chunk index, (its input frames as uint8, video settings)), decoding the clip once,
        in order, and holding only the frames that a chunk still to send needs."""
        frames = enumerate(self.source())
        buffer: dict[int, np.ndarray] = {}
        for n, k in enumerate(todo):
            c = chunks[k]
            if c.stop - 1 not in buffer:
                for f, rgb in frames:
                    buffer[f] = np.round(rgb * 255).astype(np.uint8)
                    if f == c.stop - 1:
                        break
            if c.stop - 1 not in buffer:
                raise ImageError(f"{self.input}: ends after {max(buffer, default=-1) + 1} frames, not {self.frames}; give --max-frames")
            batch = np.stack([buffer[f] for f in c])
            keep_from = chunks[todo[n + 1]].start if n + 1 < len(todo) else c.stop
            for f in [f for f in buffer if f < keep_from]:
                del buffer[f]
            yield k, (batch, self.video)

    def assemble(self) -> None:
        """Encode the frames into the output video (with the input's audio), then drop the
        work folder unless asked to keep it. Nothing to do for a folder output."""
        if not self.to_video:
            return
        assert self.info is not None
        audio = None if self.info.folder else self.input
        vio.write_video(self.work, self.frames, self.output, self.info.fps, audio)
        if not self.keep_frames:
            shutil.rmtree(self.work)

    def missing(self) -> list[int]:
        have = set(vio.done_frames(self.work))
        return [i for i in range(self.frames) if i not in have]


def _at_size(settings: RunSettings, height: int, width: int) -> RunSettings:
    """Settings whose output is exactly (height, width) for a frame of that size."""
    side = max(height, width)
    scales = (*settings.scales[:-1], side) if settings.scales else None
    return settings.replace(size=side, fit="longest", scales=scales)


def _last_line(e: BaseException) -> str:
    """A remote error's own message: Ray wraps it in a traceback, whose last line it is."""
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__
