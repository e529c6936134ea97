"""``onnxstyle batch``: every image of a folder, on local worker processes or Ray actors.

The items are every image of the input folder, each with its output. An output that exists is
complete (outputs are written atomically), so a rerun skips it: that is all resuming takes.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..errors import Interrupted, OutputError
from ..runtime import inputs
from ..runtime.image_io import write_atomic
from ..workers.ray_address import DEFAULT_TIMEOUT as DEFAULT_RAY_TIMEOUT
from ..workers.worker import ModelsSource, Outcome, WorkerSpec
from .options import (
    EXIT_USAGE, IMAGE_RUN_OPTIONS, Common, RayAddressOpt, RayTimeoutOpt, VerboseOpt, choice, command, err, fail, interrupt_code, sigterm_as_interrupt,
)

READABLE = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
EXIT_MIXED = 1  # failures of several kinds: the generic error code


@dataclass(frozen=True)
class Item:
    name: str  # the input's file name, as reports show it
    path: Path
    output: Path


def plan_items(input_dir: Path, out_dir: Path, ext: str) -> list[Item]:
    """One item per image file of ``input_dir`` (not recursive, hidden files skipped), in
    name order. Outputs are named after the input's stem; where two inputs share a stem
    (a.jpg, a.png) their full names are kept (a.jpg.png) so neither overwrites the other."""
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in READABLE and not p.name.startswith("."))
    stems = Counter(p.stem for p in files)
    return [Item(p.name, p, out_dir / f"{p.stem if stems[p.stem] == 1 else p.name}{ext}") for p in files]


@dataclass
class Tally:
    """The running account of a batch, for its progress lines and its summary."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (name, message, exit code)
    evaluations: int = 0

    @property
    def finished(self) -> int:
        return self.skipped + self.done + len(self.failed)

    def exit_code(self) -> int:
        """0 when nothing failed; else the failures' exit code if they share one (6: an
        unreadable image, 9: numerical faults, …), or 1 for a mix."""
        codes = {code for _, _, code in self.failed}
        if not codes:
            return 0
        return codes.pop() if len(codes) == 1 else EXIT_MIXED

    def summary(self, seconds: float) -> str:
        rate = 60.0 * self.done / seconds if seconds > 0 and self.done else 0.0
        text = f"batch: {self.done} done, {self.skipped} skipped (output exists), {len(self.failed)} failed of {self.total}"
        return text + (f"; {rate:.2f} images/min" if rate else "")


@command(run=IMAGE_RUN_OPTIONS, init=("content, style or noise", None))
def batch(
    input_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="folder of content images")],
    styles: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="one or more style images")],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="folder for the results (created if missing)")],
    out_format: Annotated[choice(("png", "jpg", "webp")), typer.Option("--format", help="output image format")] = "png",
    workers: Annotated[
        Optional[int], typer.Option(min=1, help="worker processes (Ray: actors)", show_default="one per core, as memory allows")
    ] = None,
    ray: Annotated[bool, typer.Option("--ray", help="run on Ray (pip install 'onnxstyle[ray]'): a local Ray, or --ray-address")] = False,
    ray_address: RayAddressOpt = None,
    ray_timeout: RayTimeoutOpt = DEFAULT_RAY_TIMEOUT,
    verbose: VerboseOpt = False,
    *, run: dict[str, Any], common: Common,
) -> None:
    """Stylize every image of INPUT_DIR into OUTPUT; outputs that exist are skipped (resume)."""
    if run["init"] not in (None, "content", "style", "noise"):
        raise fail(f"--init {run['init']}: content, style or noise for a batch", EXIT_USAGE)
    settings = common.settings(run, len(styles), shape_grid=True)
    if ray or ray_address:  # an address that does not answer: one line now, not minutes of Ray retrying
        from ..workers import ray_address as ra

        ra.check(ra.resolve(ray_address), ray_timeout)
    if output.resolve() == input_dir.resolve():
        raise fail(f"{output}: is the input folder; choose another output folder", EXIT_USAGE)
    items = plan_items(input_dir, output, f".{out_format}")
    if not items:
        raise fail(f"{input_dir}: no images (png, jpg, webp, bmp, tif)", EXIT_USAGE)
    todo = [it for it in items if not it.output.exists()]
    tally = Tally(len(items), skipped=len(items) - len(todo))
    if tally.skipped:
        common.say(f"skipping {tally.skipped} of {len(items)} images whose outputs exist in {output}")
    if not todo:
        common.say(tally.summary(0.0))
        return
    try:
        output.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"{output}: cannot be created ({e.strerror})") from None
    stylizer = common.open()
    # The styles, decoded once by the driver at the side every run uses them.
    side = inputs.style_side(settings)
    style_rgbs = [inputs.decode(p, side, max_pixels=common.max_pixels)[0] for p in styles]
    spec = WorkerSpec(
        ModelsSource(str(stylizer.engine.folder), stylizer.engine.fix_hint), stylizer.engine.config, style_rgbs,
        settings, f".{out_format}", common.max_pixels, {"styles": [p.name for p in styles], "models": str(stylizer.engine.folder)},
    )
    ray_on = (ray_address, ray_timeout, verbose) if ray or ray_address else None
    _run(_pool(spec, stylizer, len(todo), workers, common.threads, ray_on), todo, tally, common.say)


def _pool(
    spec: WorkerSpec, stylizer: Any, items: int, workers: int | None, threads: int | None, ray: tuple[str | None, float, bool] | None
) -> Any:
    """Local processes, or Ray actors when ``ray`` is (address, timeout, verbose)."""
    from ..runtime.memory import available_bytes, estimate_run_bytes
    from ..runtime.providers import physical_cores
    from ..workers.pools import LocalWorkers, RayWorkers, split_cores

    if ray is not None:
        address, timeout, verbose = ray
        return RayWorkers(spec, threads or 1, workers, address, timeout=timeout, verbose=verbose)
    side = spec.settings.size
    need = estimate_run_bytes(stylizer.engine.manifest.spec, side, side, spec.settings)
    have = available_bytes()
    split = split_cores(physical_cores(), items, workers, threads, have // need if have else None)
    return LocalWorkers(spec, split)


def _run(pool: Any, todo: list[Item], tally: Tally, say: Any) -> None:
    """Hand the items to the pool, write each output as it lands, end with the summary."""
    by_name = {it.name: it for it in todo}
    kind = "Ray actors" if type(pool).__name__ == "RayWorkers" else "worker processes"
    say(f"{len(todo)} images on {pool.split.workers} {kind} × {pool.split.threads} threads")
    # Paths where the workers share this machine's files; else each input's bytes, read as it is sent.
    local = getattr(pool, "local", True)
    tasks = ((it.name, (it.name, str(it.path), None) if local else (it.name, None, it.path.read_bytes())) for it in todo)
    t0 = time.perf_counter()
    try:
        with sigterm_as_interrupt(), pool:
            for name, outcome in pool.map_unordered("image", tasks):
                _record(by_name[name], outcome, tally, say)
    except (Interrupted, KeyboardInterrupt) as e:
        say(f"interrupted: {tally.done} done this run; run the same command again to resume (outputs that exist are skipped)")
        raise typer.Exit(interrupt_code(e)) from None
    summary = tally.summary(time.perf_counter() - t0)
    if tally.failed:
        for name, message, _ in tally.failed:
            err.print(f"  failed: {escape(name)}: {escape(message)}", soft_wrap=True)
        raise fail(summary, tally.exit_code())
    say(summary)


def _record(item: Item, outcome: Any, tally: Tally, say: Any) -> None:
    n = f"[{tally.finished + 1}/{tally.total}]"
    if isinstance(outcome, Outcome) and outcome.data is not None:
        try:
            write_atomic(item.output, outcome.data)
        except OSError as e:
            tally.failed.append((item.name, f"{item.output}: cannot be written ({e.strerror})", OutputError.exit_code))
            say(f"{n} {item.name} failed: {item.output} cannot be written ({e.strerror})")
            return
        tally.done += 1
        tally.evaluations += outcome.evaluations
        say(f"{n} {item.name} → {item.output} ({outcome.evaluations} evaluations, {outcome.seconds:.1f}s)")
        return
    if isinstance(outcome, Outcome):
        message, code = outcome.error or "failed", outcome.exit_code or 1
    else:  # an exception from the worker or its process (Ray wraps it in a traceback: its last line)
        text = str(outcome).strip()
        message, code = f"{type(outcome).__name__}: {text.splitlines()[-1] if text else ''}", 1
    tally.failed.append((item.name, message, code))
    say(f"{n} {item.name} failed: {message}")
