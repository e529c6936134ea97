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


def test_cpu_optimized_model_is_cached_in_the_compiled_cache(caffe_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import numpy as np

    from onnxstyle.runtime import cache
    from onnxstyle.runtime.engine import Engine
    from onnxstyle.runtime.settings import EngineConfig

    def targets(e: Engine, x: np.ndarray) -> dict[str, np.ndarray]:
        wanted = {i["name"] for i in e.manifest.inputs("loss_grad")}
        t = {k: v for k, v in e.features(x).items() if k in wanted}
        t["guide"] = np.ones((1, 1, *x.shape[2:]), np.float32)
        return t

    monkeypatch.setenv("ONNXSTYLE_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "m"
    shutil.copytree(caffe_export, models)
    listing = sorted(p.name for p in models.iterdir())
    x = np.full((1, 3, 40, 48), 0.5, np.float32)
    cpu = EngineConfig(device="cpu")
    e = Engine(models, cpu)
    t = targets(e, x)
    first = e.loss_grad(x, t)

    def cached() -> dict[str, Path]:
        return {d.name.split("-")[0]: d / "model.onnx" for d in cache.compiled_root().glob("*-onnxruntime-fp32-*")}

    copies = cached()
    assert sorted(copies) == ["features", "loss_grad"] and all(p.is_file() for p in copies.values())
    assert all((p.parent / "model.weights.bin").stat().st_size > 40 * 2**20 for p in copies.values())  # weights beside, not inline
    assert sorted(p.name for p in models.iterdir()) == listing  # nothing written into the models folder
    # A second engine loads the optimized copies (the same files, not made again), and computes the same thing.
    inodes = {k: p.stat().st_ino for k, p in copies.items()}
    e2 = Engine(models, cpu)
    again = e2.loss_grad(x, targets(e2, x))
    assert {k: p.stat().st_ino for k, p in cached().items()} == inodes
    assert again.loss == pytest.approx(first.loss, rel=1e-5)
    # A corrupt cached copy is dropped and rebuilt from the export, not an error.
    copies["loss_grad"].write_bytes(b"garbage")
    e3 = Engine(models, cpu)
    assert e3.loss_grad(x, targets(e3, x)).loss == pytest.approx(first.loss, rel=1e-5)
    assert copies["loss_grad"].stat().st_size > 1000
    # A graph changed in place (same manifest) does not find the copy made from the old one.
    import os

    os.utime(models / "features.onnx")
    Engine(models, cpu).features(x)
    assert len(list(cache.compiled_root().glob("features-onnxruntime-fp32-*"))) == 2


# ---- backend choice: one pure function over what the machine offers ----------------------------
from onnxstyle.errors import MissingDependencyError  # noqa: E402
from onnxstyle.runtime.backends import Availability, select_backend  # noqa: E402
from onnxstyle.runtime.settings import EngineConfig  # noqa: E402

ORT_CPU = (CPU,)
EVERYTHING = (TRT, CUDA, CPU)


@pytest.mark.parametrize(
    "avail,device,precision,backend,first",
    [
        (Availability(EVERYTHING, True, True, 2), "auto", "auto", "onnxruntime", TRT),
        (Availability((CUDA, CPU), True, True, 2), "auto", "auto", "onnxruntime", CUDA),
        (Availability(ORT_CPU, True, True, 2), "auto", "auto", "openvino", None),
        (Availability(ORT_CPU, False, False, 2), "auto", "auto", "onnxruntime", CPU),
        (Availability((), True, False, 2), "auto", "auto", "openvino", None),  # OpenVINO alone
        (Availability(ORT_CPU, True, True, 2), "cpu", "auto", "onnxruntime", CPU),  # cpu: onnxruntime's
        (Availability(EVERYTHING, True, True, 2), "auto", "bf16", "openvino", None),  # bf16 asked: OpenVINO
        (Availability(EVERYTHING, True, True, 2), "openvino", "auto", "openvino", None),
    ],
)
def test_auto_takes_tensorrt_cuda_openvino_then_onnxruntime(avail: Availability, device: str, precision: str, backend: str, first: str | None) -> None:
    c = select_backend(avail, EngineConfig(device=device, precision=precision))
    assert c.backend == backend
    if first is not None:
        assert c.providers[0] == first


def test_auto_precision_is_bf16_only_where_native() -> None:
    native = select_backend(Availability(ORT_CPU, True, True, 4), EngineConfig())
    emulated = select_backend(Availability(ORT_CPU, True, False, 4), EngineConfig())
    assert (native.backend, native.precision) == ("openvino", "bf16")
    assert (emulated.backend, emulated.precision) == ("openvino", "fp32")
    assert native.threads == 4 and select_backend(Availability(ORT_CPU, True, True, 4), EngineConfig(threads=1)).threads == 1
    assert select_backend(Availability(EVERYTHING, False, False, 2), EngineConfig()).precision == "fp32"  # TensorRT fp16 only when asked
    assert select_backend(Availability(EVERYTHING, False, False, 2), EngineConfig(precision="fp16")).precision == "fp16"


@pytest.mark.parametrize(
    "avail,config,error,needle",
    [
        (Availability(ORT_CPU, True, False, 2), EngineConfig(precision="bf16"), ProviderError, "no native bf16"),
        (Availability(ORT_CPU, True, True, 2), EngineConfig(device="cpu", precision="bf16"), ProviderError, "--device openvino"),
        (Availability(ORT_CPU, True, True, 2), EngineConfig(device="openvino", precision="fp16"), ProviderError, "TensorRT"),
        (Availability(ORT_CPU, True, True, 2), EngineConfig(device="cpu", precision="fp16"), ProviderError, "TensorRT"),
        (Availability(ORT_CPU, False, False, 2), EngineConfig(device="openvino"), MissingDependencyError, "pip install"),
        (Availability((), False, False, 2), EngineConfig(), MissingDependencyError, "onnxruntime is not installed"),
        (Availability(ORT_CPU, True, True, 2), EngineConfig(device="cuda"), ProviderError, "onnxruntime-gpu"),
    ],
)
def test_requests_that_cannot_be_met_are_errors(avail: Availability, config: EngineConfig, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        select_backend(avail, config)


def test_openvino_compiled_models_are_cached_in_the_compiled_cache(caffe_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import numpy as np

    from onnxstyle.runtime import cache
    from onnxstyle.runtime.backends import openvino_info
    from onnxstyle.runtime.engine import Engine

    if not openvino_info()[0]:
        pytest.fail("OpenVINO is part of the cpu extra the tests install")
    monkeypatch.setenv("ONNXSTYLE_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "m"
    shutil.copytree(caffe_export, models)
    listing = sorted(p.name for p in models.iterdir())
    x = np.full((1, 3, 40, 48), 0.5, np.float32)
    first = Engine(models, EngineConfig(device="openvino", precision="fp32")).features(x)
    blobs = sorted(p.name for p in cache.compiled_root().glob("features-openvino-f32-*/*.blob"))
    assert blobs  # compiled once, stored
    assert sorted(p.name for p in models.iterdir()) == listing  # and not in the models folder
    again = Engine(models, EngineConfig(device="openvino", precision="fp32")).features(x)
    assert sorted(p.name for p in cache.compiled_root().glob("features-openvino-f32-*/*.blob")) == blobs  # loaded, not recompiled
    np.testing.assert_allclose(again["gram_relu3_1"], first["gram_relu3_1"], rtol=1e-6)


def test_openvino_threads_are_not_pinned_so_workers_share_the_cores(caffe_export: Path) -> None:
    """Pinned, two 1-thread worker processes both land on core 0 (benchmarks/batch.py measured
    1.08× for two workers over one); the compiled model must say pinning is off and use the
    threads asked for."""
    import numpy as np

    from onnxstyle.runtime.engine import Engine

    engine = Engine(caffe_export, EngineConfig(device="openvino", precision="fp32", threads=1))
    engine.features(np.full((1, 3, 40, 48), 0.5, np.float32))
    (runner,) = engine._runners.values()
    assert runner.compiled.get_property("ENABLE_CPU_PINNING") is False
    assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
