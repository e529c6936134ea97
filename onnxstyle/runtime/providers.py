"""Execution providers: which to use (a pure function) and how to configure each."""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import ProviderError
from .settings import DEVICES

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


# The devices a user may ask for, from the one list of them (settings.DEVICES).
Device = Enum("Device", {d: d for d in DEVICES}, type=str)  # type: ignore[misc]


# Fastest first. TensorRT compiles fused engines; CUDA runs node by node; CPU always exists.
FALLBACK_ORDER: tuple[str, ...] = (TRT, CUDA, CPU)
_REQUESTED = {Device.cpu: CPU, Device.cuda: CUDA, Device.tensorrt: TRT}


def select_providers(available: Sequence[str], requested: Device | str = Device.auto) -> list[str]:
    """Providers to hand onnxruntime, best first, always ending with the CPU.

    ``auto`` takes TensorRT → CUDA → CPU among those available. An explicit request for a
    provider that is not available is an error, not a silent fallback: a user who asked
    for the GPU and got the CPU would wait 50× longer without knowing why. TensorRT keeps
    CUDA behind it for the nodes TensorRT cannot take.
    """
    req = Device(requested)
    avail = set(available)
    if req is Device.openvino:
        raise ValueError("openvino is not an onnxruntime provider; select_backend handles it")
    if req is Device.auto:
        chosen = [p for p in FALLBACK_ORDER if p in avail]
    else:
        want = _REQUESTED[req]
        if want not in avail:
            have = ", ".join(p for p in available) or "none"
            hint = " (install onnxruntime-gpu: pip install 'onnxstyle[gpu]')" if req is not Device.cpu else ""
            raise ProviderError(f"--device {req.value} needs {want}, which this onnxruntime lacks (has: {have}){hint}")
        chosen = [p for p in FALLBACK_ORDER[FALLBACK_ORDER.index(want) :] if p in avail]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def physical_cores() -> int:
    """Physical cores this process may use: onnxruntime's conv kernels gain nothing from SMT siblings."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        cpu = phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in [*f, "\n"]:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    cpu = int(val)
                elif key == "physical id":
                    phys = val
                elif key == "core id":
                    core = val
                elif not key and cpu is not None:
                    if cpu in allowed:
                        cores.add((phys or "0", core if core is not None else str(cpu)))
                    cpu = phys = core = None
    except OSError:
        return max(1, len(allowed))
    return max(1, len(cores) or len(allowed))


def cpu_model() -> str:
    """The CPU's marketing name, for benchmark reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.machine()


def profile_string(shapes: dict[str, tuple[int, ...]]) -> str:
    """TensorRT's profile syntax: ``name:1x3x384x512,guide:1x1x384x512,...``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items() if len(shape) > 0)


def trt_options(cache_dir: Path | None, shapes: dict[str, tuple[int, ...]], fp16: bool = False, device_id: int = 0) -> dict[str, Any]:
    """TensorRT options: engines cached on disk, one optimization profile pinned to this size.

    TensorRT needs a profile for *every* dynamic input (the image, the guide, the content
    targets whose size follows the image's, the per-region Gram targets), not only the
    image; scalar inputs (the loss weights) are static and left out. A profile pinned to
    the size being optimized lets TensorRT pick kernels for it; the engine cache (a folder
    of the per-user compiled cache, never the models folder; None: no cache) makes the
    second run at that size start in seconds, not minutes.
    """
    profile = profile_string(shapes)
    cached = cache_dir is not None
    return {
        "device_id": device_id,
        "trt_fp16_enable": bool(fp16),
        "trt_engine_cache_enable": cached,
        **({"trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir)} if cached else {}),
        "trt_profile_min_shapes": profile,
        "trt_profile_opt_shapes": profile,
        "trt_profile_max_shapes": profile,
    }


def cuda_options(device_id: int = 0) -> dict[str, Any]:
    # The exhaustive cuDNN search pays off over hundreds of evaluations at one size.
    return {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True}


def provider_options(
    providers: Sequence[str], trt_cache: Path | None, shapes: dict[str, tuple[int, ...]], fp16: bool = False, device_id: int = 0
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in providers:
        if p == TRT:
            out.append(trt_options(trt_cache, shapes, fp16, device_id))
        elif p == CUDA:
            out.append(cuda_options(device_id))
        else:
            out.append({})
    return out
