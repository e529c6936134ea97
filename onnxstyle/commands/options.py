"""What every command shares, beneath all of them: consoles, errors and exit codes, signals,
and the options, generated from the settings dataclasses' knobs.

A command module imports this one and the library, never another command. Errors are typed in
the library (:mod:`onnxstyle.errors`) and turned into one line and an exit code here, at the
edge; the service does the same for HTTP in its own layer.
"""

from __future__ import annotations

import functools
import inspect
import json
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import EXIT_USAGE as EXIT_USAGE, EngineError, Interrupted, OnnxStyleError, OptimizationError, Terminated, describe
from ..runtime.image_io import DEFAULT_MAX_PIXELS
from ..spec import Pooling
from ..runtime.settings import DEVICES, PRECISIONS, EngineConfig, RunSettings, build_run_settings, knobs, preset_names, scalar_type

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ENGINE = EngineConfig()
EXIT_FAULTS = OptimizationError.exit_code
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
# Set by the app's callback (--verbose/-v) on every invocation: whether an error shows its cause.
VERBOSE = {"on": False}

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


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
        except (OnnxStyleError, ValueError, MemoryError) as e:
            explain(e)
            message, code = describe(e) or (str(e), 1)
            hint = " (onnxstyle -v … shows the engine's own message)" if isinstance(e, EngineError) and not VERBOSE["on"] else ""
            raise fail(message + hint, code) from None

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


def duration(sec: float) -> str:
    return f"{sec:.1f}s" if sec < 60 else f"{int(sec // 60)}m{int(sec % 60):02d}s"


def choice(values: Sequence[str]) -> Any:
    """The type of an option whose values are these (typer draws and checks them)."""
    return Literal[tuple(values)]


# ---- the options of the export's identity and the engine ------------------------------------
ModelsOpt = Annotated[Optional[Path], typer.Option(file_okay=False, help="exported models folder (default: the per-user cache)")]
PresetOpt = Annotated[Optional[choice(preset_names())], typer.Option(help="loss definition", show_default="gatys, or what --models holds")
]
PoolingOpt = Annotated[Optional[Pooling], typer.Option(show_default="max, or what --models holds")]
WeightsOpt = Annotated[Optional[str], typer.Option(help="caffe, torchvision or a weights file", show_default="caffe, or what --models holds")]
DeviceOpt = Annotated[choice(DEVICES), typer.Option(help="auto: TensorRT → CUDA → OpenVINO → onnxruntime CPU; openvino: OpenVINO's CPU plugin")
]
DeviceIdOpt = Annotated[int, typer.Option(min=0, help="GPU index for cuda/tensorrt")]
ThreadsOpt = Annotated[Optional[int], typer.Option(min=1, show_default="one per physical core")]
PrecisionOpt = Annotated[choice(PRECISIONS), typer.Option(help="auto: bf16 where the CPU computes it natively, else fp32; fp16: TensorRT")
]
MaxPixelsOpt = Annotated[
    int, typer.Option(min=1, help="refuse input images with more pixels than this (decompression bombs), before decoding")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")]
RayAddressOpt = Annotated[
    Optional[str],
    typer.Option(help="a Ray cluster (ray://host:10001 or host:6379); implies --ray", show_default="RAY_ADDRESS, else a local Ray"),
]
RayTimeoutOpt = Annotated[
    float, typer.Option(min=0.1, help="seconds a Ray address has to answer before the run ends with an error (checked before any work)")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show Ray's own log lines and its workers' output")]


def models_preset(models: Path | None) -> str | None:
    """The preset a given models folder was exported with: its run settings then apply."""
    if models is None:
        return None
    try:
        return str(json.loads((models / "manifest.json").read_text())["preset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the models check that follows reports what is wrong


# The run settings an image command (stylize, batch) offers, each generated from its knob.
IMAGE_RUN_OPTIONS = (
    "size", "iterations", "content_weight", "style_weight", "tv_weight", "style_blend", "style_scale", "init", "seed",
    "optimizer", "adam_lr", "lbfgs_step", "preserve_color", "scales", "scale_iterations", "tile", "max_memory", "stop_tol",
    "stop_window",
)


@dataclass
class Common:
    """The options every computing command takes: which export, on which engine, how loud."""

    preset: str | None = None
    pooling: str | None = None
    weights: str | None = None
    models: Path | None = None
    device: str = ENGINE.device
    device_id: int = ENGINE.device_id
    threads: int | None = None
    precision: str = ENGINE.precision
    max_pixels: int = DEFAULT_MAX_PIXELS
    quiet: bool = False

    @property
    def preset_name(self) -> str:
        return self.preset or models_preset(self.models) or "gatys"

    def say(self, text: str) -> None:
        if not self.quiet:
            err.print(escape(text))

    def config(self, precision: str | None = None) -> EngineConfig:
        return EngineConfig(self.device, self.device_id, self.threads, precision or self.precision)

    def settings(self, run: dict[str, Any], styles: int | None = None, **fixed: Any) -> RunSettings:
        """The run settings the user gave, over the preset's (the one builder, see RunSettings)."""
        return build_run_settings(self.preset_name, styles, **run, **fixed)

    def open(self, preset: str | None = None, pooling: str | None = None, config: EngineConfig | None = None) -> Any:
        """A warm stylizer for these export settings (exported once on first use where torch is
        installed); a given models folder is checked against what was asked explicitly."""
        from ..autoexport import resolve_models
        from ..exportdir import check_matches, export_settings_for
        from ..runtime.stylizer import Stylizer

        preset, pooling = preset or self.preset_name, pooling or self.pooling
        ref = resolve_models(export_settings_for(preset, pooling, self.weights, log=self.say), self.models, log=self.say)
        stylizer = Stylizer(ref.folder, config or self.config(), ref.fix)
        if ref.given:
            asked = preset if preset != models_preset(self.models) else None
            check_matches(stylizer.engine.manifest, ref.fix, preset=asked, pooling=pooling, weights=self.weights)
        return stylizer


COMMON: dict[str, tuple[Any, Any]] = {
    "preset": (PresetOpt, None),
    "pooling": (PoolingOpt, None),
    "weights": (WeightsOpt, None),
    "models": (ModelsOpt, None),
    "device": (DeviceOpt, ENGINE.device),
    "device_id": (DeviceIdOpt, ENGINE.device_id),
    "threads": (ThreadsOpt, None),
    "precision": (PrecisionOpt, ENGINE.precision),
    "max_pixels": (MaxPixelsOpt, DEFAULT_MAX_PIXELS),
    "quiet": (QuietOpt, False),
}
_LIST_OR_TEXT = ("style_blend", "scales", "scale_iterations", "tile", "max_memory", "init")


def run_option(name: str, help: str | None = None, show: str | None = None) -> tuple[str, Any]:
    """(parameter name, annotation) of a RunSettings field as an option, from its knob: the
    flag, help, default shown, choices and bounds. Always None by default: what is not given
    comes from the preset."""
    f = knobs()[name]
    k = f.metadata["knob"]
    param = k["flag"] or f.name
    kind: Any = choice(k["choices"]) if k["choices"] else str if name in _LIST_OR_TEXT else scalar_type(f)
    shown = show or k["show"] or (f"{f.default}, or the preset's" if f.default is not None else None)
    option = typer.Option(
        f"--{param.replace('_', '-')}", help=help or k["help"], show_default=shown if shown else False, min=k["min"], max=k["max"],
    )
    return param, Annotated[Optional[kind], option]


def command(run: Sequence[str] = (), common: bool = True, **overrides: tuple[str | None, str | None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command with the shared options appended to its own: the RunSettings fields in ``run``
    (passed as ``run``, a dict of those given) and, with ``common``, the export and engine options
    (passed as ``common``, a :class:`Common`). ``overrides``: field → (help, shown default) where a
    command means something narrower. Errors are translated (:func:`handle_errors`)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(fn).parameters.values()
               if p.name not in ("run", "common")]
        extra = [run_option(name, *overrides.get(name, (None, None))) for name in run]
        params = own + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a) for n, a in extra]
        if common:
            params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, (a, d) in COMMON.items()]
        names = [n for n, _ in extra]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names}
            if common:
                kwargs["common"] = Common(**{n: kwargs.pop(n) for n in COMMON})
            return fn(**kwargs, **({"run": given} if run else {}))

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer reads the signature above, not the function's own
        return handle_errors(wrapper)

    return wrap
