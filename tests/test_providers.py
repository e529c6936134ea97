from __future__ import annotations

from pathlib import Path

import pytest

from onnxstyle.errors import ProviderError
from onnxstyle.runtime.providers import (
    CPU,
    CUDA,
    TRT,
    Device,
    physical_cores,
    provider_options,
    select_providers,
    trt_options,
)


@pytest.mark.parametrize(
    "available,expected",
    [
        ([CPU], [CPU]),
        ([CUDA, CPU], [CUDA, CPU]),
        ([CPU, CUDA, TRT], [TRT, CUDA, CPU]),  # the order onnxruntime lists them in does not matter
        ([TRT, CPU], [TRT, CPU]),
        (["AzureExecutionProvider", CPU], [CPU]),  # unknown providers are never picked
        ([], [CPU]),
    ],
)
def test_auto_takes_tensorrt_then_cuda_then_cpu(available: list[str], expected: list[str]) -> None:
    assert select_providers(available, Device.auto) == expected
    assert select_providers(available, "auto") == expected


def test_explicit_requests() -> None:
    everything = [TRT, CUDA, CPU]
    assert select_providers(everything, Device.cpu) == [CPU]
    assert select_providers(everything, Device.cuda) == [CUDA, CPU]
    assert select_providers(everything, Device.tensorrt) == [TRT, CUDA, CPU]
    assert select_providers([TRT, CPU], "tensorrt") == [TRT, CPU]


@pytest.mark.parametrize("device", [Device.cuda, Device.tensorrt])
def test_unavailable_request_is_an_error_not_a_silent_fallback(device: Device) -> None:
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        select_providers([CPU], device)


def test_unknown_device_name() -> None:
    with pytest.raises(ValueError):
        select_providers([CPU], "tpu")


SHAPES = {"image": (1, 3, 384, 512), "guide": (1, 1, 384, 512), "content_relu4_2": (1, 512, 48, 64), "gram_relu1_1": (1, 64, 64), "style_weight": ()}


def test_tensorrt_options(tmp_path: Path) -> None:
    o = trt_options(tmp_path, SHAPES, fp16=True, device_id=1)
    assert o["trt_fp16_enable"] is True and o["device_id"] == 1
    assert o["trt_engine_cache_enable"] is True and o["trt_engine_cache_path"] == str(tmp_path)
    # Every dynamic input gets a profile (onnxruntime refuses a session otherwise); scalars do not.
    want = "image:1x3x384x512,guide:1x1x384x512,content_relu4_2:1x512x48x64,gram_relu1_1:1x64x64"
    for k in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        assert o[k] == want
    assert trt_options(tmp_path, SHAPES)["trt_fp16_enable"] is False


def test_provider_options_align_with_providers(tmp_path: Path) -> None:
    opts = provider_options([TRT, CUDA, CPU], tmp_path, {"image": (1, 3, 64, 96)}, device_id=2)
    assert len(opts) == 3
    assert opts[0]["trt_profile_opt_shapes"] == "image:1x3x64x96" and opts[0]["device_id"] == 2
    assert opts[1]["cudnn_conv_algo_search"] == "EXHAUSTIVE" and opts[1]["device_id"] == 2
    assert opts[2] == {}


def test_physical_cores_is_sane() -> None:
    import os

    n = physical_cores()
    assert 1 <= n <= (os.cpu_count() or 1)


def test_cpu_optimized_model_is_cached_beside_the_export(caffe_export: Path, tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from onnxstyle.runtime.engine import Engine
    from onnxstyle.runtime.settings import EngineConfig

    def targets(e: Engine, x: np.ndarray) -> dict[str, np.ndarray]:
        wanted = {i["name"] for i in e.manifest.inputs("loss_grad")}
        t = {k: v for k, v in e.features(x).items() if k in wanted}
        t["guide"] = np.ones((1, 1, *x.shape[2:]), np.float32)
        return t

    models = tmp_path / "m"
    shutil.copytree(caffe_export, models, ignore=shutil.ignore_patterns("optimized"))
    x = np.full((1, 3, 40, 48), 0.5, np.float32)
    cpu = EngineConfig(device="cpu")
    e = Engine(models, cpu)
    t = targets(e, x)
    first = e.loss_grad(x, t)
    cached = sorted((models / "optimized").glob("*.onnx"))
    assert [p.name.split(".")[0] for p in cached] == ["features", "loss_grad"]
    # A second engine loads the optimized copies, and computes the same thing.
    e2 = Engine(models, cpu)
    again = e2.loss_grad(x, targets(e2, x))
    # Both runners found the cached optimized copy (nothing left to save).
    assert all(r._cpu_model_path()[1] is None for r in e2._runners.values())
    assert again.loss == pytest.approx(first.loss, rel=1e-5)
    # A corrupt cached copy is dropped and rebuilt from the export, not an error.
    cached[1].write_bytes(b"garbage")
    import os

    os.utime(cached[1], (2e9, 2e9))
    e3 = Engine(models, cpu)
    assert e3.loss_grad(x, targets(e3, x)).loss == pytest.approx(first.loss, rel=1e-5)
