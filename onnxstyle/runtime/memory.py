"""Memory a run will need, estimated before it starts, against what the machine has."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ResourceError
from typing import TYPE_CHECKING

from ..spec import LAYER_CHANNELS, LAYER_INDEX, LAYERS, LossSpec, layer_stride

if TYPE_CHECKING:
    from .settings import RunSettings

# Calibrated on the default export: 3 evaluations at 512x384 peak at 1290 MB
# (benchmarks/results/speed.md), where activation_bytes (every conv and ReLU output of one
# forward pass) is 458 MB; 600 MB + 2 × 458 MB = 1516 MB stays on the safe side of it,
# before the optimizer's own history is added.
ACTIVATION_FACTOR = 2.0
BASE_BYTES = 600 * 2**20  # interpreter, onnxruntime, two sessions' weights and arenas


def activation_bytes(spec: LossSpec, height: int, width: int) -> int:
    total = 0
    for name, *_ in LAYERS[: LAYER_INDEX[spec.deepest] + 1]:
        s = layer_stride(name)
        total += LAYER_CHANNELS[name] * math.ceil(height / s) * math.ceil(width / s) * 4
    return total


def working_set_bytes(spec: LossSpec, height: int, width: int, optimizer: str, history: int) -> int:
    pixels = 3 * height * width
    # L-BFGS-B keeps 2·m float64 vectors plus a few work vectors; Adam two float32 moments.
    opt = (2 * history + 8) * pixels * 8 if optimizer == "lbfgs" else 6 * pixels * 4
    return int(BASE_BYTES + ACTIVATION_FACTOR * activation_bytes(spec, height, width) + opt)


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


def check_fits(spec: LossSpec, height: int, width: int, optimizer: str, history: int, available: int | None = None) -> int:
    need = working_set_bytes(spec, height, width, optimizer, history)
    have = available if available is not None else available_bytes()
    if have is not None and need > have:
        raise ResourceError(
            f"{width}x{height} needs about {need / 2**30:.1f} GiB (activations for the gradient and the "
            f"optimizer's history) but {have / 2**30:.1f} GiB is available; use a smaller --size"
        )
    return need


def estimate_run_bytes(spec: LossSpec, height: int, width: int, settings: "RunSettings") -> int:
    """Peak memory of a whole run whose output is height × width (the largest stage decides)."""
    return working_set_bytes(spec, height, width, settings.optimizer, settings.lbfgs_history)
