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

from ..spec import canonical_preset, preset_spec

# Evaluations per stage of an explicit schedule given no --iterations (--scales alone): the
# fixed count every stage had before the pyramid.
FIXED_ITERATIONS = 300
# The stop rule's defaults for the pyramid (RunSettings.stop_rule).
STOP_WINDOW = 20
STOP_TOL = 2e-3
STOP_TOL_COARSE = 1e-2  # a 256 px trace: ~1% per 20 evaluations after 150 on the coarse stages

DEVICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OPTIMIZERS = ("lbfgs", "lbfgs-b", "torch-lbfgs", "adam", "keras-lbfgs")


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
    size: int = 512
    # Gradient evaluations per stage (the unit of cost). None: the default pyramid (see
    # stages()), whose stages end when the loss stops improving, each at most its own cap. A
    # number: that many in every stage, the fixed schedule of old (FIXED_ITERATIONS without
    # one but with --scales); the stop rule is then off unless stop_tol/stop_window are given.
    iterations: int | None = None
    # None: the export's default (gatys: content 1, style 20, TV 0). The gatys losses are
    # relative errors, so these balance the same way at every size and for both weights.
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    # Video: the weight of the temporal term (None: the export's default); it acts only where
    # a run is given a temporal target and weight map.
    temporal_weight: float | None = None
    # Several styles: their Gram targets are averaged with these weights (normalized to sum 1).
    style_blend: tuple[float, ...] | None = None
    # Style images are resized to size × style_scale (longest side) before their Grams are
    # taken: larger scales give larger brush strokes.
    style_scale: float = 1.0
    # content: fastest to converge and keeps the scene; noise is Gatys' original choice;
    # "image": start from the init image passed to the run.
    init: str = "content"
    # Fixed by default so that the same command gives the same pixels on the same machine.
    seed: int = 0
    # lbfgs: a projected L-BFGS in float32 (pixels kept in [0,1]), within 0.35% of scipy's
    # float64 L-BFGS-B's loss at 46% of its memory (benchmarks/optimizer.py); lbfgs-b: scipy's;
    # torch-lbfgs: torch.optim.LBFGS as the PyTorch tutorial runs it; adam; keras-lbfgs: the
    # Keras example's restarted rounds.
    optimizer: str = "lbfgs"
    # L-BFGS memory; 20 pairs reach the loss of 100 within 0.1% (benchmarks/optimizer.py) at a
    # fifth of the memory. A tiled stage that cannot afford them keeps fewer (runtime/plan.py).
    lbfgs_history: int = 20
    # keras-lbfgs: the evaluations are split into this many fresh L-BFGS-B runs.
    rounds: int = 1
    # Adam step in [0,1] pixel units (0.02 ≈ 5/255 per step at first).
    adam_lr: float = 0.02
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    # TensorFlow/Keras form of Adam's ε (on the uncorrected √v), for the tf-tutorial preset.
    adam_tf_epsilon: bool = False
    # What --size measures: the longest side, or the height (the Keras example's 400 rows).
    fit: str = "longest"
    # Colour control (Gatys et al. 2017): None, "luminance" (transfer luminance only, keep
    # the content's chroma) or "histogram" (recolour the style to the content's colours).
    preserve_color: str | None = None
    # Coarse-to-fine: longest side per stage, the last being the output size; each stage
    # starts from the previous result upsampled. None: see coarse_to_fine_above.
    scales: tuple[int, ...] | None = None
    # Evaluations per stage (default: ``iterations`` for every stage).
    scale_iterations: tuple[int, ...] | None = None
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
    # rule ends a stage earlier once it has flattened. At most 275 output-size evaluations'
    # worth of work at 512 px (80 × 0.94 + 200) against the old 300, 279 at 1024 against 338.
    # Smoke figures at 256 px (loaded machine, Tübingen × Starry Night, fp32 judge): 300 fixed
    # 1.129; the pyramid at 120/200 caps 1.112 in the same work; at 60/100, 1.165 in half.
    # The output-size stage needs ~150 evaluations from an upsampled image to reach the old
    # loss: its cap is what buys quality, the coarse caps what buy time.
    pyramid_coarse_iterations: int = 80
    pyramid_final_iterations: int = 200
    # The stop rule (optimize.StopRule): a stage ends when its best loss fell by less than
    # stop_tol (relative) over the last stop_window evaluations. None: on for the default
    # pyramid (window 20, tol 0.002 at the output size, 0.01 on coarse stages, where the
    # next stage refines anyway), off for an explicit --iterations/--scales (exactly that
    # many evaluations, as before). 0 disables either.
    stop_window: int | None = None
    stop_tol: float | None = None
    # L-BFGS state handed from one coarse-to-fine stage to the next: "pairs" (the curvature
    # pairs resampled to the finer size, and the inverse-Hessian scale), "scale" (the scale
    # only), "none" (each stage starts with an empty memory, as before). None: "pairs" for
    # the default pyramid, "none" for an explicit schedule.
    carry: str | None = None
    # Exact tiled evaluation (runtime/tiling.py): "auto" tiles a stage only when its untiled
    # estimate exceeds the memory budget, "off" never, a number is the inner tile side in px.
    tile: str | int = "auto"
    # The memory budget in bytes; None: what is available less a margin (runtime/memory.py).
    max_memory: int | None = None
    # Run each untiled stage on one of four grid canvases (runtime/canvas.py) on engines that
    # compile per shape (OpenVINO, TensorRT): batch and the service see every aspect ratio and
    # would compile and cache an engine per photo. Off for a single image, where snapping
    # would cost up to a third more pixels to save one compile of about a second.
    shape_grid: bool = False

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size {self.size}: must be at least 32 px")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be at least 1")
        if self.carry not in (None, "pairs", "scale", "none"):
            raise ValueError(f"carry {self.carry!r}: choose pairs, scale or none")
        if (self.stop_window is not None and self.stop_window < 0) or (self.stop_tol is not None and not 0 <= self.stop_tol < 1):
            raise ValueError("stop-window must be ≥ 0 and stop-tol in [0, 1)")
        if self.pyramid_start < 32 or min(self.pyramid_coarse_iterations, self.pyramid_final_iterations) < 1:
            raise ValueError("pyramid-start must be ≥ 32 px and the pyramid's caps ≥ 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose {', '.join(OPTIMIZERS)}")
        if self.preserve_color not in (None, "luminance", "histogram"):
            raise ValueError(f"preserve_color {self.preserve_color!r}: choose luminance or histogram")
        if not (self.tile in ("auto", "off") or (isinstance(self.tile, int) and self.tile >= 32)):
            raise ValueError(f"--tile {self.tile!r}: auto, off, or an inner tile size of at least 32 px")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError("--max-memory must be positive")
        if self.init not in ("content", "style", "noise", "image"):
            raise ValueError(f"init {self.init!r}: choose content, style, noise or image")
        if self.fit not in ("longest", "height"):
            raise ValueError(f"fit {self.fit!r}: longest or height")
        for name in ("content_weight", "style_weight", "tv_weight", "temporal_weight"):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and v != float("inf")):
                raise ValueError(f"{name.replace('_', '-')} {v}: must be a finite number ≥ 0")

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
