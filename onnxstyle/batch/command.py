"""The ``onnxstyle batch`` command: paths, printing and exit codes of a batch."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..cli import (
    ENGINE,
    EXIT_USAGE,
    RUN,
    ContentWeightOpt,
    DeviceIdOpt,
    DeviceOpt,
    InitOpt,
    IterationsOpt,
    LrOpt,
    MaxPixelsOpt,
    ModelsOpt,
    OptimizerOpt,
    PoolingOpt,
    Precision,
    PrecisionOpt,
    PresetOpt,
    PreserveColorOpt,
    QuietOpt,
    ScaleItersOpt,
    ScalesOpt,
    SeedOpt,
    SizeOpt,
    StyleBlendOpt,
    StyleScaleOpt,
    StyleWeightOpt,
    ThreadsOpt,
    TvWeightOpt,
    WeightsOpt,
    engine_config,
    fail,
    floats,
    interrupt_code,
    ints,
    models_preset,
    open_stylizer,
    printer,
    sigterm_as_interrupt,
    app,
    err,
    handle_errors,
)
from ..errors import Interrupted, OutputError
from ..ray_address import DEFAULT_TIMEOUT as DEFAULT_RAY_TIMEOUT
from ..runtime.image_io import DEFAULT_MAX_PIXELS, load_image, write_atomic
from ..runtime.providers import Device
from ..runtime.settings import RunSettings
from .items import Item, Tally, plan_items
from .worker import ModelsSource, Outcome, WorkerSpec


class OutFormat(str, Enum):
    png = "png"
    jpg = "jpg"
    webp = "webp"


WorkersOpt = Annotated[
    Optional[int], typer.Option(min=1, help="worker processes (Ray: actors)", show_default="one per core, as memory allows")
]
RayOpt = Annotated[bool, typer.Option("--ray", help="run on Ray (pip install 'onnxstyle[ray]'): a local Ray, or --ray-address")]
RayAddressOpt = Annotated[
    Optional[str],
    typer.Option(help="a Ray cluster (ray://host:10001 or host:6379); implies --ray", show_default="RAY_ADDRESS, else a local Ray"),
]
RayTimeoutOpt = Annotated[
    float,
    typer.Option(min=0.1, help="seconds a Ray address has to answer before the run ends with an error (checked before any work)"),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show Ray's own log lines and its workers' output")]


def run_settings(
    preset: str, size: int | None, iterations: int | None, init: str | None, optimizer: Any, preserve_color: Any,
    scales: str | None, scale_iterations: str | None, style_blend: str | None, **explicit: Any,
) -> RunSettings:
    """Settings from the options shared with stylize; a usage error before any work."""
    from ..runtime.settings import preset_run_settings

    if init not in (None, "content", "style", "noise"):
        raise fail(f"--init {init}: content, style or noise for a batch", EXIT_USAGE)
    stage_sizes = ints("--scales", scales)
    if stage_sizes and size is not None and size != stage_sizes[-1]:
        raise fail(f"--size {size} differs from the last of --scales ({stage_sizes[-1]})", EXIT_USAGE)
    settings = preset_run_settings(
        preset, size=stage_sizes[-1] if stage_sizes else size, iterations=iterations, init=init,
        optimizer=optimizer.value if optimizer else None, preserve_color=preserve_color.value if preserve_color else None,
        scales=stage_sizes, scale_iterations=ints("--scale-iterations", scale_iterations),
        style_blend=floats("--style-blend", style_blend), shape_grid=True, **explicit,
    )
    settings.stages()  # a usage error now rather than in every worker
    return settings


def check_ray_address(address: str | None, timeout: float) -> None:
    """Fail in ``timeout`` seconds, in one line, on a Ray address (given or RAY_ADDRESS) that
    does not answer: before the models are opened, not after minutes of Ray retrying."""
    from .. import ray_address as ra

    ra.check(ra.resolve(address), timeout)


def load_styles(paths: list[Path], settings: RunSettings, max_pixels: int) -> list[Any]:
    """The style images, decoded once by the driver at the largest size a run uses them."""
    side = max(32, round(max(size for size, _ in settings.stages()) * settings.style_scale))
    return [load_image(p, side, max_pixels)[0] for p in paths]


@app.command()
@handle_errors
def batch(
    input_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="folder of content images")],
    styles: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="one or more style images")],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="folder for the results (created if missing)")],
    out_format: Annotated[OutFormat, typer.Option("--format", help="output image format")] = OutFormat.png,
    size: SizeOpt = None,
    iterations: IterationsOpt = None,
    content_weight: ContentWeightOpt = None,
    style_weight: StyleWeightOpt = None,
    tv_weight: TvWeightOpt = None,
    style_blend: StyleBlendOpt = None,
    style_scale: StyleScaleOpt = RUN.style_scale,
    init: InitOpt = None,
    seed: SeedOpt = RUN.seed,
    optimizer: OptimizerOpt = None,
    lr: LrOpt = None,
    preserve_color: PreserveColorOpt = None,
    scales: ScalesOpt = None,
    scale_iterations: ScaleItersOpt = None,
    preset: PresetOpt = None,
    pooling: PoolingOpt = None,
    weights: WeightsOpt = None,
    models: ModelsOpt = None,
    device: DeviceOpt = Device(ENGINE.device),
    device_id: DeviceIdOpt = ENGINE.device_id,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = Precision(ENGINE.precision),
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    workers: WorkersOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    ray_timeout: RayTimeoutOpt = DEFAULT_RAY_TIMEOUT,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Stylize every image of INPUT_DIR into OUTPUT; outputs that exist are skipped (resume)."""
    say = printer(quiet)
    preset_name = preset.value if preset else models_preset(models) or "gatys"
    settings = run_settings(
        preset_name, size, iterations, init, optimizer, preserve_color, scales, scale_iterations, style_blend,
        content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight, style_scale=style_scale, seed=seed, adam_lr=lr,
    )
    if ray or ray_address:
        check_ray_address(ray_address, ray_timeout)
    if output.resolve() == input_dir.resolve():
        raise fail(f"{output}: is the input folder; choose another output folder", EXIT_USAGE)
    items = plan_items(input_dir, output, f".{out_format.value}")
    if not items:
        raise fail(f"{input_dir}: no images (png, jpg, webp, bmp, tif)", EXIT_USAGE)
    todo = [it for it in items if not it.output.exists()]
    tally = Tally(len(items), skipped=len(items) - len(todo))
    if tally.skipped:
        say(f"skipping {tally.skipped} of {len(items)} images whose outputs exist in {output}")
    if not todo:
        say(tally.summary(0.0))
        return
    try:
        output.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"{output}: cannot be created ({e.strerror})") from None
    config = engine_config(device, device_id, threads, precision, False)
    stylizer = open_stylizer(preset_name, pooling and pooling.value, weights, models, config, say)
    spec = WorkerSpec(
        ModelsSource(str(stylizer.engine.folder), stylizer.engine.fix_hint), config, load_styles(styles, settings, max_pixels),
        settings, f".{out_format.value}", max_pixels, {"styles": [p.name for p in styles], "models": str(stylizer.engine.folder)},
    )
    ray_on = (ray_address, ray_timeout, verbose) if ray or ray_address else None
    pool = _pool(spec, stylizer, len(todo), workers, threads, ray_on)
    _run(pool, todo, tally, say)


def _pool(
    spec: WorkerSpec, stylizer: Any, items: int, workers: int | None, threads: int | None, ray: tuple[str | None, float, bool] | None
) -> Any:
    """Local processes, or Ray actors when ``ray`` is (address, timeout, verbose)."""
    from ..runtime.memory import available_bytes, estimate_run_bytes
    from ..runtime.providers import physical_cores
    from .pools import LocalWorkers, RayWorkers, split_cores

    if ray is not None:
        address, timeout, verbose = ray
        return RayWorkers(spec, threads or 1, workers, address, timeout=timeout, verbose=verbose)
    side = spec.settings.stages()[-1][0]
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
