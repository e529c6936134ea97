"""Run-time configuration, split by lifetime.

* :class:`EngineConfig`: fixed when an engine is built (backend, device, threads, precision).
  Changing it means building another engine, so it is not a per-run knob.
* :class:`RunSettings`: everything that may change from one image to the next on a warm engine.

The export's identity (what the graphs compute) is the third part:
:class:`onnxstyle.spec.ExportSettings`. The CLI reads its defaults from these dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..spec import PRESETS, canonical_preset, preset_spec

# Evaluations per stage of an explicit schedule given no --iterations (--scales alone): the
# fixed count every stage had before the pyramid.
FIXED_ITERATIONS = 300
# The stop rule's defaults for the pyramid (RunSettings.stop_rule).
STOP_WINDOW = 20
STOP_TOL = 2e-3
STOP_TOL_COARSE = 1e-2  # a 256 px trace: ~1% per 20 evaluations after 150 on the coarse stages

# Every allowed choice, defined once: the dataclasses check them, the CLI, the service's
# schema and the backend selection read them from here.
DEVICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OPTIMIZERS = ("lbfgs", "lbfgs-b", "torch-lbfgs", "adam", "keras-lbfgs")
PRESERVE_COLOR = ("luminance", "histogram")
INITS = ("content", "style", "noise", "image")
FITS = ("longest", "height")
CARRIES = ("pairs", "scale", "none")
LBFGS_STEPS = ("unit", "armijo")


def knob(default: Any, help: str, *, flag: str | None = None, show: str | None = None, choices: tuple[str, ...] | None = None,
         min: float | None = None, max: float | None = None) -> Any:
    """A user-facing setting: its default, and what the command line says of it (help, its
    --flag when that differs from the field's name, the default shown, choices and bounds).
    The commands generate their run options from these, so a new option is one edit here."""
    meta = {"help": help, "flag": flag, "show": show, "choices": choices, "min": min, "max": max}
    return dataclasses.field(default=default, metadata={"knob": meta})


@dataclass(frozen=True)
class EngineConfig:
    """How the graphs run; fixed for an engine's lifetime."""

    # auto: the fastest correct backend present (TensorRT → CUDA → OpenVINO → onnxruntime CPU).
    # An explicit device that is missing is an error, never a silent fallback.
    device: str = "auto"
    # Which GPU on a multi-GPU machine (CUDA and TensorRT).
    device_id: int = 0
    # None: one thread per physical core; SMT siblings add nothing to convolution kernels.
    threads: int | None = None
    # auto: bf16 where the CPU computes it natively (OpenVINO), fp32 elsewhere; fp16 is
    # TensorRT's half precision.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.device_id < 0:
            raise ValueError("device id must be 0 or more")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be 1 or more")

    def replace(self, **changes: Any) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunSettings:
    """Every per-image setting of a stylization; a warm engine takes a new one each run."""

    # Longest side of the output. 512 px is what Gatys et al. and neural-style showcase;
    # the cost per evaluation grows with the pixel count.
    size: int = knob(512, "longest side of the output in px", min=32)
    # Gradient evaluations per stage (the unit of cost). None: the default pyramid (see
    # stages()), whose stages end when the loss stops improving, each at most its own cap. A
    # number: that many in every stage, the fixed schedule of old (FIXED_ITERATIONS without
    # one but with --scales); the stop rule is then off unless stop_tol/stop_window are given.
    iterations: int | None = knob(None, "gradient evaluations per stage (each stage of --scales), no stop rule", min=1,
                                  show="the pyramid's caps (20 per coarse stage, 250 at the size), or the preset's")
    # None: the export's default (gatys: content 1, style 20, TV 0). The gatys losses are
    # relative errors, so these balance the same way at every size and for both weights.
    content_weight: float | None = knob(None, "weight of the content loss", min=0, show="the export's (gatys: 1)")
    style_weight: float | None = knob(None, "weight of the style loss", min=0, show="the export's (gatys: 20)")
    tv_weight: float | None = knob(None, "weight of the total-variation loss", min=0, show="the export's (gatys: 0)")
    # Video: the weight of the temporal term (None: the export's default); it acts only where
    # a run is given a temporal target and weight map.
    temporal_weight: float | None = knob(None, "weight of the temporal term (video)", min=0, show="the export's")
    # Several styles: their Gram targets are averaged with these weights (normalized to sum 1).
    style_blend: tuple[float, ...] | None = knob(None, "weights of several styles, e.g. 0.7,0.3")
    # Style images are resized to size × style_scale (longest side) before their Grams are
    # taken: larger scales give larger brush strokes.
    style_scale: float = knob(1.0, "style image size relative to --size", min=0.05, max=4.0)
    # content: fastest to converge and keeps the scene; noise is Gatys' original choice;
    # "image": start from the init image passed to the run.
    init: str = knob("content", "content, style, noise or an image path")
    # Fixed by default so that the same command gives the same pixels on the same machine.
    seed: int = knob(0, "for noise init", min=0, max=2**32 - 1)  # numpy's seeds
    # lbfgs: a projected L-BFGS in float32 (pixels kept in [0,1]), within 0.35% of scipy's
    # float64 L-BFGS-B's loss at 46% of its memory (benchmarks/optimizer.py); lbfgs-b: scipy's;
    # torch-lbfgs: torch.optim.LBFGS as the PyTorch tutorial runs it; adam; keras-lbfgs: the
    # Keras example's restarted rounds.
    optimizer: str = knob("lbfgs", "the optimizer", choices=OPTIMIZERS)
    # L-BFGS memory; 20 pairs reach the loss of 100 within 0.1% (benchmarks/optimizer.py) at a
    # fifth of the memory. A tiled stage that cannot afford them keeps fewer (runtime/plan.py).
    lbfgs_history: int = 20
    # How lbfgs accepts and aims a step (optimize.lbfgs32): "unit" takes the quasi-Newton
    # step as torch's L-BFGS does, "armijo" the monotone projected search of before. Unit
    # reached a 1.3% lower fp32 loss and a 6% lower style distance in the same 300
    # evaluations at 256 px (Tübingen × The Scream, bf16).
    lbfgs_step: str = knob("unit", "lbfgs: unit (the quasi-Newton step, as torch's L-BFGS) or armijo (monotone, as before)",
                           choices=LBFGS_STEPS)
    # keras-lbfgs: the evaluations are split into this many fresh L-BFGS-B runs.
    rounds: int = 1
    # Adam step in [0,1] pixel units (0.02 ≈ 5/255 per step at first).
    adam_lr: float = knob(0.02, "Adam step in \\[0,1] pixel units", min=1e-9, flag="lr")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    # TensorFlow/Keras form of Adam's ε (on the uncorrected √v), for the tf-tutorial preset.
    adam_tf_epsilon: bool = False
    # What --size measures: the longest side, or the height (the Keras example's 400 rows).
    fit: str = "longest"
    # Colour control (Gatys et al. 2017): None, "luminance" (transfer luminance only, keep
    # the content's chroma) or "histogram" (recolour the style to the content's colours).
    preserve_color: str | None = knob(None, "luminance: keep the content's colours; histogram: recolour the style",
                                      choices=PRESERVE_COLOR)
    # Coarse-to-fine: longest side per stage, the last being the output size; each stage
    # starts from the previous result upsampled. None: see coarse_to_fine_above.
    scales: tuple[int, ...] | None = knob(None, "coarse-to-fine, longest side per stage, e.g. 256,512,1024 (the last is the output)")
    # Evaluations per stage (default: ``iterations`` for every stage).
    scale_iterations: tuple[int, ...] | None = knob(None, "evaluations per stage, e.g. 300,150,50")
    # Above 512 px without --scales: first half the evaluations at half size, then the full
    # ``iterations`` at full size. At 512 px on OpenVINO bf16 a half-size stage reached the torch
    # reference's loss in 70 s against 93 s for one stage (torch: 457 s;
    # benchmarks/results/time_to_quality.md), and the coarse stage gets cheaper with size.
    coarse_to_fine_above: int = 512
    # The default pyramid (no --scales, no --iterations): from about pyramid_start px up to the
    # size in steps of √2, so most evaluations run where they are cheap (a 128 px evaluation
    # costs 1/16 of a 512 px one) and each stage starts from the coarser one's converged image.
    pyramid_start: int = 128
    # Evaluation caps of the pyramid: each coarse stage, and the output-size stage; the stop
    # rule ends a stage earlier once it has flattened. Measured at 512 px (AMD EPYC Zen 4,
    # bf16, Tübingen × The Starry Night, loss against seconds in one process): coarse caps
    # of 10, 20, 40 and 80, or a 256-360-512 ladder, all reach the same loss at the same
    # time once the output-size stage has run ~150 evaluations; the output-size stage's
    # tail sets the time (it needs ~210 evaluations from any of them to reach the old
    # default's 300-evaluation loss). 20 is the cheapest cap that does not lose there
    # (10 did); 250 at the size reaches a lower loss than the old 300 in less time.
    pyramid_coarse_iterations: int = 20
    pyramid_final_iterations: int = 250
    # The stop rule (optimize.StopRule): a stage ends when its best loss fell by less than
    # stop_tol (relative) over the last stop_window evaluations. None: on for the default
    # pyramid (window 20, tol 0.002 at the output size, 0.01 on coarse stages, where the
    # next stage refines anyway), off for an explicit --iterations/--scales (exactly that
    # many evaluations, as before). 0 disables either.
    stop_window: int | None = knob(None, "evaluations the stop rule looks back over; 0: never stop early", min=0, show="20")
    stop_tol: float | None = knob(
        None, "end a stage when the best loss fell by less than this fraction over --stop-window evaluations; 0: never",
        min=0, max=0.999, show="0.002 at the size and 0.01 coarser for the pyramid; off with --iterations or --scales")
    # L-BFGS state handed from one coarse-to-fine stage to the next: "pairs" (the curvature
    # pairs resampled to the finer size, and the inverse-Hessian scale), "scale" (the scale
    # only), "none" (each stage starts with an empty memory, as before). None: "pairs" for
    # the default pyramid, "none" for an explicit schedule.
    carry: str | None = None
    # Exact tiled evaluation (runtime/tiling.py): "auto" tiles a stage only when its untiled
    # estimate exceeds the memory budget, "off" never, a number is the inner tile side in px.
    tile: str | int = knob("auto", "auto: tile a stage only when it would not fit the memory budget; off; or the inner tile size in px")
    # The memory budget in bytes; None: what is available less a margin (runtime/memory.py).
    max_memory: int | None = knob(None, "memory budget, e.g. 6G or 512M", show="available memory less a margin")
    # Run each untiled stage on one of four grid canvases (runtime/canvas.py) on engines that
    # compile per shape (OpenVINO, TensorRT): batch and the service see every aspect ratio and
    # would compile and cache an engine per photo. Off for a single image, where snapping
    # would cost up to a third more pixels to save one compile of about a second.
    shape_grid: bool = False

    def __post_init__(self) -> None:
        if self.scales:
            # The last scale is the output's size, by definition: size can never disagree with
            # the schedule (build_run_settings refuses a given --size that differs).
            object.__setattr__(self, "size", int(self.scales[-1]))
        if self.size < 32:
            raise ValueError(f"size {self.size}: must be at least 32 px")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be at least 1")
        if self.lbfgs_step not in LBFGS_STEPS:
            raise ValueError(f"lbfgs-step {self.lbfgs_step!r}: choose {' or '.join(LBFGS_STEPS)}")
        if self.carry not in (None, *CARRIES):
            raise ValueError(f"carry {self.carry!r}: choose pairs, scale or none")
        if (self.stop_window is not None and self.stop_window < 0) or (self.stop_tol is not None and not 0 <= self.stop_tol < 1):
            raise ValueError("stop-window must be ≥ 0 and stop-tol in [0, 1)")
        if self.pyramid_start < 32 or min(self.pyramid_coarse_iterations, self.pyramid_final_iterations) < 1:
            raise ValueError("pyramid-start must be ≥ 32 px and the pyramid's caps ≥ 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose {', '.join(OPTIMIZERS)}")
        if self.preserve_color not in (None, *PRESERVE_COLOR):
            raise ValueError(f"preserve_color {self.preserve_color!r}: choose luminance or histogram")
        if not (self.tile in ("auto", "off") or (isinstance(self.tile, int) and self.tile >= 32)):
            raise ValueError(f"--tile {self.tile!r}: auto, off, or an inner tile size of at least 32 px")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError("--max-memory must be positive")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r}: choose content, style, noise or image")
        if self.fit not in FITS:
            raise ValueError(f"fit {self.fit!r}: longest or height")
        for name in ("content_weight", "style_weight", "tv_weight", "temporal_weight"):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and v != float("inf")):
                raise ValueError(f"{name.replace('_', '-')} {v}: must be a finite number ≥ 0")
        self.stages()  # the schedule's own rules (rising scales, one count per scale)

    def replace(self, **changes: Any) -> "RunSettings":
        return dataclasses.replace(self, **changes)

    @property
    def pyramid(self) -> bool:
        """Whether the default pyramid plans the run (no explicit --scales or --iterations)."""
        return not self.scales and self.iterations is None

    def stages(self) -> list[tuple[int, int]]:
        """(longest side, evaluations) per coarse-to-fine stage; the last size is the output's.
        With the stop rule on, a stage's evaluations are its cap."""
        if self.pyramid:
            sizes = pyramid_sizes(self.size, self.pyramid_start)
            return [(n, self.pyramid_coarse_iterations) for n in sizes[:-1]] + [(self.size, self.pyramid_final_iterations)]
        iterations = self.iterations or FIXED_ITERATIONS
        if not self.scales:
            if self.coarse_to_fine_above and self.size > self.coarse_to_fine_above:
                return [(self.size // 2, max(1, iterations // 2)), (self.size, iterations)]
            return [(self.size, iterations)]
        sizes = list(self.scales)
        if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 32:
            raise ValueError(f"--scales {','.join(map(str, sizes))}: sizes must rise, from 32 px up")
        its = list(self.scale_iterations) if self.scale_iterations else [iterations] * len(sizes)
        if len(its) != len(sizes) or min(its) < 1:
            raise ValueError(f"--scale-iterations needs {len(sizes)} positive counts, one per scale")
        return list(zip(sizes, its))

    def stop_rule(self, stage: int, stages: int) -> tuple[int, float]:
        """(window, tol) of the stop rule in stage ``stage`` (1-based) of ``stages``; (0, 0.0): off.

        On for the default pyramid, or when either stop setting is given (the other then takes
        its default). Coarse stages stop at a looser tol (× STOP_TOL_COARSE / STOP_TOL): the
        next stage goes on from their image, so their last slow per-cent is wasted there."""
        if not (self.pyramid or self.stop_window is not None or self.stop_tol is not None):
            return (0, 0.0)
        window = STOP_WINDOW if self.stop_window is None else self.stop_window
        tol = STOP_TOL if self.stop_tol is None else self.stop_tol
        if stage < stages:
            tol *= STOP_TOL_COARSE / STOP_TOL
        return (window, min(tol, 0.5)) if window and tol else (0, 0.0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the result for a content of (height, width)."""
        from .image_io import fit_size

        return fit_size(height, width, self.size, self.fit)

    def style_side(self, side: int | None = None) -> int:
        """Longest side of the style images for a stage of longest side ``side`` (default: the
        output size): size × style_scale, so larger scales give larger brush strokes."""
        return max(32, round((side or self.size) * self.style_scale))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists): what the PNG, the job table and the video's work
        record store."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSettings":
        """The inverse of :meth:`to_dict`; unknown keys (a newer onnxstyle's) are ignored."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def carry_mode(self) -> str:
        return self.carry or ("pairs" if self.pyramid else "none")

    def total_evaluations(self) -> int:
        return sum(n for _, n in self.stages())

    def weights(self) -> dict[str, float]:
        """The weight inputs to override in loss_grad (the export's defaults for the rest)."""
        pairs = (
            ("content_weight", self.content_weight),
            ("style_weight", self.style_weight),
            ("tv_weight", self.tv_weight),
            ("temporal_weight", self.temporal_weight),
        )
        return {k: float(v) for k, v in pairs if v is not None}


# What each preset sets besides the loss: optimizer, schedule, size (explicit settings override).
PRESET_RUN: dict[str, dict[str, Any]] = {
    "gatys": {},
    # PyTorch tutorial: torch.optim.LBFGS (lr 1, history 100, no line search), clamped,
    # content init, 300 steps, 512 px.
    "torch-tutorial": {"optimizer": "torch-lbfgs", "lbfgs_history": 100, "iterations": 300, "size": 512},
    "torch-notebook": {"optimizer": "torch-lbfgs", "lbfgs_history": 100, "iterations": 300, "size": 512},
    # TensorFlow tutorial: Adam(0.02, β1 0.99, ε 0.1), clipped each step, 10 × 100 steps, 512 px.
    "tf-tutorial": {
        "optimizer": "adam",
        "adam_lr": 0.02,
        "adam_betas": (0.99, 0.999),
        "adam_eps": 0.1,
        "adam_tf_epsilon": True,
        "iterations": 1000,
        "size": 512,
    },
    # Keras example: fmin_l_bfgs_b(maxfun=20) × 20 rounds (scipy's m = 10), height 400.
    "keras-example": {"optimizer": "keras-lbfgs", "lbfgs_history": 10, "rounds": 20, "iterations": 400, "size": 400, "fit": "height"},
}


def pyramid_sizes(size: int, start: int = 128) -> list[int]:
    """Stage sizes from about ``start`` up to ``size`` in steps of √2, the last being ``size``.

    Counted down from the size, so the steps next to the output (where evaluations cost
    most) are exact √2; each size is rounded to a multiple of 8 (whole strides of VGG's
    first pooling levels, and a shape that the compiled-shape caches see again). The
    coarsest is the first at or below ``start`` × √2^½ (128 at 512, 128 at 1024).
    """
    sizes = [size]
    k = 1
    while True:
        n = size / 2 ** (k / 2)
        if n < start / 2**0.25 or n < 32:
            break
        sizes.append(max(32, int(round(n / 8)) * 8))
        k += 1
    return sorted(set(sizes))


def preset_run_settings(preset: str = "gatys", **explicit: Any) -> RunSettings:
    """A preset's run settings, with the explicitly given ones (not None) on top."""
    name = canonical_preset(preset)
    preset_spec(name)  # raises on an unknown name
    base = dict(PRESET_RUN.get(name, {}))
    base.update({k: v for k, v in explicit.items() if v is not None})
    return RunSettings(**base)


def knobs() -> dict[str, dataclasses.Field]:
    """RunSettings' user-facing fields by name; ``.metadata["knob"]`` holds what knob() was given."""
    return {f.name: f for f in dataclasses.fields(RunSettings) if "knob" in f.metadata}


def scalar_type(f: dataclasses.Field) -> type:
    """float, int or str: the type of one value of a field (its annotation is text here)."""
    return float if "float" in str(f.type) else int if "int" in str(f.type) else str


# The settings a user gives by name (the CLI's flags, the service's JSON keys, the Python API's
# keywords): every field, under its --flag where that differs (adam_lr is --lr).
ALIASES: dict[str, str] = {
    f.metadata["knob"]["flag"]: f.name for f in dataclasses.fields(RunSettings) if "knob" in f.metadata and f.metadata["knob"]["flag"]
}
_LISTS = {"style_blend": float, "scales": int, "scale_iterations": int}


def _parsed(name: str, value: Any) -> Any:
    """A value as a user gives it (text from a command line, JSON lists) in the field's type."""
    if name in _LISTS and isinstance(value, (str, list, tuple)):
        kind = _LISTS[name]
        items = value.split(",") if isinstance(value, str) else value
        try:
            return tuple(kind(x) for x in items if not isinstance(x, str) or x.strip())
        except (TypeError, ValueError):
            example = "256,512" if kind is int else "0.7,0.3"
            raise ValueError(f"--{name.replace('_', '-')} {value!r}: expected {'whole numbers' if kind is int else 'numbers'} like {example}") from None
    if name == "tile" and isinstance(value, str):
        t = value.strip().lower()
        if t in ("auto", "off"):
            return t
        try:
            return int(t)
        except ValueError:
            raise ValueError(f"--tile {value!r}: auto, off or a tile size in px") from None
    if name == "max_memory" and isinstance(value, str):
        return parse_size(value)
    return value


def parse_size(text: str) -> int:
    """'6G', '512M', '1.5GiB', '800000000' → bytes (binary units: G means GiB)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if t and t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except ValueError:
        raise ValueError(f"--max-memory {text!r}: expected a size like 6G, 512M or a number of bytes") from None
    if value <= 0:
        raise ValueError(f"--max-memory {text!r}: must be positive")
    return int(value)


def build_run_settings(preset: str = "gatys", styles: int | None = None, **given: Any) -> RunSettings:
    """The one builder from user input: the CLI, batch, video, the service and the Python API.

    ``given`` holds settings by field name or --flag name (None: not given); text and lists are
    parsed, the preset's run settings lie beneath, and every rule is checked here, with the
    same message everywhere: a ValueError a command shows as a usage error (exit 2, HTTP 422).
    ``styles``: how many style images the run has, for --style-blend.
    """
    names = {f.name for f in dataclasses.fields(RunSettings)}
    values: dict[str, Any] = {}
    for key, value in given.items():
        name = ALIASES.get(key, key)
        if name not in names:
            raise ValueError(f"unknown setting {key!r}")
        if value is not None:
            values[name] = _parsed(name, value)
    scales = values.get("scales")
    if scales and "size" in values and values["size"] != scales[-1]:
        raise ValueError(f"--size {values['size']} differs from the last of --scales ({scales[-1]})")
    if scales:
        values["size"] = scales[-1]
    settings = preset_run_settings(preset, **values)
    if styles is not None and settings.style_blend is not None and len(settings.style_blend) != styles:
        raise ValueError(f"--style-blend has {len(settings.style_blend)} weights for {styles} style images")
    return settings


def preset_names() -> tuple[str, ...]:
    """Every preset name a user may give (with the aliases)."""
    from ..spec import PRESET_ALIASES

    return (*PRESETS, *PRESET_ALIASES)
