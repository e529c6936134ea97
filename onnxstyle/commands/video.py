"""``onnxstyle video``: paths, progress, printing and exit codes of a video run."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, NamedTuple, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import Interrupted
from ..video.chunks import ChunkPlan
from ..video.job import VideoJob, VideoStats
from ..video.temporal import FrameIterate, VideoSettings
from ..workers.ray_address import DEFAULT_TIMEOUT as DEFAULT_RAY_TIMEOUT
from .options import EXIT_USAGE, Common, RayTimeoutOpt, VerboseOpt, command, duration, err, fail, interrupt_code, sigterm_as_interrupt
from .progress import PLAIN_INTERVAL, terms_text

CHUNKS = ChunkPlan()
RUN_OPTIONS = (
    "size", "iterations", "temporal_weight", "content_weight", "style_weight", "tv_weight", "style_blend", "style_scale", "seed",
    "optimizer", "preserve_color",
)


class RayOn(NamedTuple):
    """Where chunks go with --ray: the address (None: RAY_ADDRESS, else local), the bound on
    its answering, and whether Ray's own log lines are shown."""

    address: str | None
    timeout: float
    verbose: bool


class VideoProgress:
    """Draws FrameIterates: a bar per clip and per frame on a terminal, plain lines in a log."""

    def __init__(self, console: Console, frames: int, done: int, quiet: bool, interval: float = PLAIN_INTERVAL) -> None:
        self.console, self.frames, self.quiet, self.interval = console, frames, quiet, interval
        self.done = done
        self.started = time.monotonic()
        self.made = 0
        self._last = float("-inf")
        self._bar: Any = None

    def __enter__(self) -> "VideoProgress":
        if not self.quiet and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), console=self.console,
            )
            self._bar.__enter__()
            self._clip = self._bar.add_task("frames", total=self.frames, completed=self.done, info="")
            self._frame = self._bar.add_task("frame", total=1, info="")
        return self

    def __call__(self, u: FrameIterate) -> None:
        if self.quiet:
            return
        if u.iterate is None:  # a frame is done
            self.done += 1
            self.made += 1
            rate = 60.0 * self.made / max(time.monotonic() - self.started, 1e-9)
            evaluations = u.result.evaluations if u.result else 0
            line = f"frame {u.frame + 1}/{self.frames} done: {evaluations} evaluations, {rate:.2f} frames/min"
            if self._bar is not None:
                self._bar.update(self._clip, completed=self.done, info=f"{rate:.2f} frames/min")
            else:
                self.console.print(escape(line), soft_wrap=True)
            return
        it = u.iterate
        if self._bar is not None:
            info = f"loss {it.loss:.4g} ({terms_text(it.terms)})"
            self._bar.update(self._frame, description=f"frame {u.frame + 1}", completed=it.step, total=it.total or it.step, info=info)
        elif time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            line = f"frame {u.frame + 1}/{self.frames} evaluation {it.step}/{it.total} loss {it.loss:.4g} ({terms_text(it.terms)})"
            self.console.print(escape(line), soft_wrap=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)


@command(run=RUN_OPTIONS)
def video(
    input: Annotated[Path, typer.Argument(exists=True, help="a video file, or a folder of frames")],
    styles: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="one or more style images")],
    output: Annotated[Path, typer.Option("--output", "-o", help="a video (.mp4, .mkv, .mov, .webm, .avi) or a folder for frames")],
    later_iterations: Annotated[
        Optional[int],
        typer.Option(min=1, help="evaluations for each frame after the first (it starts from the last one warped)", show_default="half"),
    ] = None,
    temporal: Annotated[
        bool, typer.Option("--temporal/--no-temporal", help="temporal consistency (Ruder et al. 2016), or independent frames")
    ] = True,
    max_frames: Annotated[Optional[int], typer.Option(min=1, help="stylize only the first N frames")] = None,
    fps: Annotated[Optional[float], typer.Option(min=0.001, help="frame rate of a folder of frames", show_default="25")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="discard frames of an earlier run instead of resuming")] = False,
    keep_frames: Annotated[bool, typer.Option("--keep-frames", help="keep the work folder of frames after the video is written")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="overlapping chunks of the clip on Ray (pip install 'onnxstyle[ray]')")] = False,
    ray_address: Annotated[
        Optional[str], typer.Option(help="a Ray cluster (implies --ray)", show_default="RAY_ADDRESS, else a local Ray")
    ] = None,
    chunk_frames: Annotated[int, typer.Option(min=2, help="--ray: frames per chunk")] = CHUNKS.length,
    overlap: Annotated[int, typer.Option(min=1, help="--ray: frames shared and cross-faded by neighbouring chunks")] = CHUNKS.overlap,
    workers: Annotated[Optional[int], typer.Option(min=1, help="--ray: actors", show_default="cluster CPUs / --threads")] = None,
    ray_timeout: RayTimeoutOpt = DEFAULT_RAY_TIMEOUT,
    verbose: VerboseOpt = False,
    *, run: dict[str, Any], common: Common,
) -> None:
    """Stylize a video with temporal consistency; Ctrl-C keeps the frames done, a rerun resumes."""
    from ..workers import ray_address as ra

    say = common.say
    settings = common.settings(run, len(styles))  # every frame has the clip's one shape: no grid
    plan = ChunkPlan(chunk_frames, overlap) if ray or ray_address else None
    if plan is not None:
        ra.check(ra.resolve(ray_address), ray_timeout)
    job = VideoJob(
        input, list(styles), output, settings, VideoSettings(temporal=temporal, later_iterations=later_iterations),
        max_frames=max_frames, folder_fps=Fraction(fps or 25).limit_denominator(1001), max_pixels=common.max_pixels,
        keep_frames=keep_frames,
    )
    if fps is not None and not input.is_dir():
        raise fail("--fps is for a folder of frames; a video file keeps its own frame rate", EXIT_USAGE)
    job.check_paths()
    stylizer = common.open()
    files = stylizer.engine.manifest.data.get("files", {})
    done = job.prepare(str(files.get("loss_grad.onnx", {}).get("sha256", stylizer.engine.folder)), restart)
    job.load_styles()
    assert job.info is not None
    mode = "temporal consistency" if temporal else "independent frames"
    say(
        f"{job.input.name}: {job.frames} frames at {float(job.info.fps):.3g} fps → {job.width}x{job.height}, {mode}; "
        f"device: {stylizer.engine.provider} ({stylizer.engine.threads} threads)"
    )
    if done:
        say(f"resuming: {len(done)} of {job.frames} frames already in {job.work}")
    stats = _stylize(job, stylizer, plan, workers, common.threads, RayOn(ray_address, ray_timeout, verbose), common.quiet, say)
    if job.to_video:
        say(f"assembling {job.output} …")
        job.assemble()
    made = f"{stats.made} frames in {duration(stats.seconds)} ({stats.frames_per_minute:.2f} frames/min)"
    say(f"wrote {job.output}: {made if stats.made else 'no new frames'}" + (f", {stats.reused} reused" if stats.reused else ""))


def _stylize(
    job: VideoJob, stylizer: Any, plan: ChunkPlan | None, workers: int | None, threads: int | None, ray_on: RayOn, quiet: bool,
    say: Any,
) -> VideoStats:
    """Run the frames (sequentially here, or in chunks on Ray); Ctrl-C keeps the frames written."""
    missing = len(job.missing())
    try:
        with sigterm_as_interrupt():
            if plan is None:
                with VideoProgress(err, job.frames, job.frames - missing, quiet) as view:
                    return job.run(stylizer, view)
            return _on_ray(job, stylizer, plan, workers, threads, ray_on, say)
    except (Interrupted, KeyboardInterrupt) as e:
        left = len(job.missing())
        say(f"interrupted: {job.frames - left} of {job.frames} frames are in {job.work}; run the same command again to resume")
        raise typer.Exit(interrupt_code(e)) from None


def _on_ray(
    job: VideoJob, stylizer: Any, plan: ChunkPlan, workers: int | None, threads: int | None, ray_on: RayOn, say: Any
) -> VideoStats:
    from ..workers.pools import RayWorkers
    from ..workers.worker import ModelsSource, WorkerSpec

    models = ModelsSource(str(stylizer.engine.folder), stylizer.engine.fix_hint)
    spec = WorkerSpec(models, stylizer.engine.config, job.style_rgbs, job.settings)
    with RayWorkers(spec, threads or 1, workers, ray_on.address, timeout=ray_on.timeout, verbose=ray_on.verbose) as pool:
        split = f"{pool.split.workers} actors × {pool.split.threads} threads"
        say(f"on Ray: {split}, chunks of {plan.length} frames overlapping by {plan.overlap}")
        return job.run_chunks(pool, plan, say)
