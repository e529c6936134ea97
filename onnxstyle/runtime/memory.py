"""Memory a run will need, estimated before it starts, against what the machine has.

The estimate is a model of the measured peak (benchmarks/memory.py writes the measurements
and checks the model against them): the libraries, the graphs' weights, and the larger of
two phases, computing the targets (the features pass) and optimizing (one evaluation's
working set, the optimizer's state and the image buffers). The evaluation's working set
is a calibrated multiple of the activations of one forward pass over the evaluated extent
(the whole image, or the largest tile when tiled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ResourceError
from ..spec import LossSpec
from ..layers import LAYER_CHANNELS, LAYER_INDEX, LAYERS, layer_stride

if TYPE_CHECKING:
    from .settings import RunSettings

MiB = 2**20


@dataclass(frozen=True)
class MemoryModel:
    """Bytes per part for one backend and precision, fitted to the whole-process peaks that
    benchmarks/memory.py measures (benchmarks/results/memory.json, 256 to 1536 px), so that
    measured peak ≤ estimate ≤ 1.3 × measured."""

    # Interpreter, numpy/scipy/opencv, the backend's libraries and what compiling a graph
    # holds at its peak (OpenVINO's compilation is the larger part).
    libraries: int
    # One graph's weights as the backend holds them.
    weights: int
    # One loss + gradient evaluation: this many times the float32 activations of one forward
    # pass over the evaluated extent (bf16 and the boolean backward masks make it < 1).
    pass_factor: float
    # The same for a graph compiled for every size (the tiles of a tiled pass): OpenVINO plans
    # its buffers less tightly without a static shape.
    tile_pass_factor: float
    # The features pass (inference: activations die as they are consumed).
    features_factor: float
    # On top of the fit: the estimate errs on the safe side by this much.
    margin: float = 1.1
    # A tiled pass's fixed part: the dynamic-shape graphs of both passes, whatever the tile.
    tile_fixed: int = 0


MODELS: dict[tuple[str, str], MemoryModel] = {
    # Fitted on 256-1536 px: peak ≈ 445 MiB + 0.55 × activations + optimizer + images. Tiled
    # (2048 px in tiles of 256, 512 and 1024 px, the CLI's whole process): the dynamic-shape
    # graphs of the two passes measured 760 MiB + 0.8 × a tile's activations at most.
    ("openvino", "bf16"): MemoryModel(
        libraries=245 * MiB, weights=100 * MiB, pass_factor=0.55, tile_pass_factor=0.8, features_factor=0.5, tile_fixed=760 * MiB
    ),
    # fp32 keeps twice the bytes per activation (measured 2.47 GB against 1.47 GB at 1024 px).
    ("openvino", "fp32"): MemoryModel(
        libraries=245 * MiB, weights=150 * MiB, pass_factor=1.1, tile_pass_factor=1.6, features_factor=0.6, tile_fixed=760 * MiB
    ),
    # Tiled: 1.02 × a tile's activations measured at 2048 px in 512 px tiles.
    ("onnxruntime", "fp32"): MemoryModel(libraries=120 * MiB, weights=110 * MiB, pass_factor=1.0, tile_pass_factor=1.1, features_factor=0.6),
    # TensorRT's fp16 engines on a GPU: host memory holds the libraries and the buffers it copies.
    ("onnxruntime", "fp16"): MemoryModel(libraries=600 * MiB, weights=110 * MiB, pass_factor=0.5, tile_pass_factor=0.5, features_factor=0.3),
}


def model_for(backend: str, precision: str) -> MemoryModel:
    return MODELS.get((backend, precision), MODELS[("onnxruntime", "fp32")])


def _map_bytes(name: str, height: int, width: int) -> int:
    """float32 bytes of layer ``name``'s output for an image of height × width."""
    s = layer_stride(name)
    return LAYER_CHANNELS[name] * math.ceil(height / s) * math.ceil(width / s) * 4


def activation_bytes(spec: LossSpec, height: int, width: int) -> int:
    """float32 bytes of every layer output of one forward pass up to the deepest tap."""
    return sum(_map_bytes(name, height, width) for name, *_ in LAYERS[: LAYER_INDEX[spec.deepest] + 1])


def optimizer_bytes(optimizer: str, history: int, variables: int) -> int:
    """What each optimizer keeps per variable (pixel channel); ``history``: the pairs it will
    hold (fewer than its memory when the run is shorter)."""
    if optimizer in ("lbfgs-b", "keras-lbfgs"):
        # scipy's L-BFGS-B: float64 x, g, bounds (2), and its work array of 2m+5 vectors.
        return (2 * history + 10) * 8 * variables
    if optimizer in ("lbfgs", "torch-lbfgs"):
        # float32 history pairs, plus x, g, direction, the trial point, its gradient and mask.
        return (2 * history + 6) * 4 * variables
    return 6 * 4 * variables  # Adam: x, g, two moments, a step


@dataclass(frozen=True)
class Estimate:
    """The parts of a stage's peak, in bytes; ``total`` is what is compared with the budget."""

    parts: dict[str, int] = field(default_factory=dict)
    margin: float = 1.0

    @property
    def total(self) -> int:
        p = self.parts
        optimizing = p.get("evaluation", 0) + p.get("optimizer", 0) + p.get("images", 0)
        return int(self.margin * (p.get("libraries", 0) + p.get("weights", 0) + max(p.get("targets", 0), optimizing)))


def inputs_bytes(
    content_hw: tuple[int, int], style_hws: list[tuple[int, int]], mask_hws: list[tuple[int, int]] | None = None, init: bool = False,
    preserve_color: str | None = None,
) -> int:
    """The run's inputs as float32, held whole from its first stage to its last: the content as
    given (the CLI decodes it at the output size), the styles, the init image and masks; with
    colour preservation, the recoloured copies beside them."""
    h, w = content_hw
    rgb = 12 * h * w + sum(12 * sh * sw for sh, sw in style_hws)
    return (2 if preserve_color else 1) * rgb + (12 * h * w if init else 0) + sum(4 * mh * mw for mh, mw in mask_hws or [])


def estimate_stage(
    spec: LossSpec, height: int, width: int, settings: "RunSettings", backend: str = "onnxruntime",
    precision: str = "fp32", extent: tuple[int, int] | None = None, optimizer: str | None = None, history: int | None = None,
    inputs: int | None = None,
) -> Estimate:
    """The peak of one stage at height × width; ``extent``: the largest tile when tiled;
    ``inputs``: :func:`inputs_bytes` of the run (None: a content and a square style at this
    stage's size). Coarse stages count the full-size inputs too: the showcase's 2048 px stage
    ran 264 MiB over its estimate holding a content and a style decoded at 4096 px."""
    m = model_for(backend, precision)
    eh, ew = extent or (height, width)
    tiled = extent is not None
    n = 3 * height * width
    style_side = settings.style_side(max(height, width))
    if inputs is None:
        inputs = inputs_bytes((height, width), [(style_side, style_side)])
    # the content's copy per stage, the best image, the iterate shown (and the tiles' gradient sum)
    images = (3 + (1 if tiled else 0)) * 4 * n + inputs
    if tiled:
        # A tiled stage holds the content targets whole (relu4_2 at 4096 px: 400 MB); untiled,
        # they are part of the graph's feeds, within the evaluation's factor.
        images += sum(_map_bytes(c, height, width) for c in spec.content_layers)
    targets = m.features_factor * activation_bytes(spec, min(eh, style_side), min(ew, style_side))
    pairs = min(history or settings.lbfgs_history, max(1, settings.total_evaluations()))
    act = activation_bytes(spec, eh, ew)
    parts = {
        "libraries": m.libraries,
        "weights": m.weights * (3 if tiled else 2),
        "targets": int(targets),
        "evaluation": int(m.tile_fixed + m.tile_pass_factor * act if tiled else m.pass_factor * act),
        "optimizer": optimizer_bytes(optimizer or settings.optimizer, pairs, n),
        "images": images,
    }
    return Estimate(parts, m.margin)


def estimate_run_bytes(
    spec: LossSpec, height: int, width: int, settings: "RunSettings", backend: str = "onnxruntime", precision: str = "fp32"
) -> int:
    """Peak memory of a whole untiled run whose output is height × width (its largest stage)."""
    return estimate_stage(spec, height, width, settings, backend, precision).total


def available_bytes() -> int | None:
    """MemAvailable, or the cgroup's remaining limit if that is smaller; None if unknown."""
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max" and avail is not None:
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def default_budget() -> int | None:
    """What a run may use when --max-memory is not given: what is available, less a margin
    (a tenth, at least 256 MiB) for the rest of the machine."""
    avail = available_bytes()
    if avail is None:
        return None
    return max(0, avail - max(256 * MiB, avail // 10))


def check_fits(spec: LossSpec, height: int, width: int, optimizer: str, history: int, available: int | None = None) -> int:
    """Refuse an untiled run that would not fit (kept for callers that do not plan tiles)."""
    from .settings import RunSettings

    need = estimate_run_bytes(spec, height, width, RunSettings(optimizer=optimizer, lbfgs_history=history))
    have = available if available is not None else available_bytes()
    if have is not None and need > have:
        raise ResourceError(
            f"{width}x{height} needs about {need / 2**30:.1f} GiB but {have / 2**30:.1f} GiB is available; "
            f"use a smaller --size, or --tile auto"
        )
    return need
