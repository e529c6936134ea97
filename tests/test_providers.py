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


def test_tensorrt_options(tmp_path: Path) -> None:
    o = trt_options(tmp_path, 384, 512, fp16=True)
    assert o["trt_fp16_enable"] is True
    assert o["trt_engine_cache_enable"] is True and o["trt_engine_cache_path"] == str(tmp_path)
    for k in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        assert o[k] == "image:1x3x384x512"
    assert trt_options(tmp_path, 10, 20)["trt_fp16_enable"] is False


def test_provider_options_align_with_providers(tmp_path: Path) -> None:
    opts = provider_options([TRT, CUDA, CPU], tmp_path, 64, 96)
    assert len(opts) == 3
    assert opts[0]["trt_profile_opt_shapes"] == "image:1x3x64x96"
    assert opts[1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert opts[2] == {}


def test_physical_cores_is_sane() -> None:
    import os

    n = physical_cores()
    assert 1 <= n <= (os.cpu_count() or 1)
