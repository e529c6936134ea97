"""Issue 21 (1, 2, 8): images too small for the network are refused by the plan; engine failures
are the engine's errors, not the models folder's; one line each, the cause with -v."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from onnxstyle.cli import app
from onnxstyle.errors import (
    DeviceError,
    EngineError,
    ModelsError,
    SizeError,
    engine_failure,
    engine_message,
)
from onnxstyle.runtime.backends import available_backends, is_parse_failure
from onnxstyle.runtime.engine import Engine
from onnxstyle.runtime.plan import check_sizes, plan_run
from onnxstyle.runtime.settings import EngineConfig, RunSettings
from onnxstyle.spec import LossSpec, preset_spec

runner = CliRunner()
AVAIL = available_backends()
DEVICES = [d for d, ok in (("openvino", AVAIL.openvino), ("cpu", bool(AVAIL.ort_providers))) if ok]

# What OpenVINO raised for a 15 px side (reshape of the features graph), and onnxruntime at run.
OV_POOL = (
    "Check 'cmp::le(kernel, dim.get_length())' failed at src/core/shape_inference/include/pooling_shape_inference_util.hpp:149:\n"
    "While validating node 'opset1::AvgPool pool4_guide__35 (opset1::AvgPool pool3_guide__34[0]:f32[1,1,1,1]) -> "
    "(f32[?,1,1..,1..])' with friendly_name 'pool4_guide__35':\n"
    "Kernel after dilation has size (dim: 2) larger than the data shape after padding (dim: 1) at axis 0.\n"
)


def _image(path: Path, h: int, w: int) -> Path:
    rng = np.random.default_rng(h * 1000 + w)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, output
    return lines[0]


# ---- the minimum, from the spec ----------------------------------------------------------
def test_min_side_is_the_deepest_layers_stride() -> None:
    assert LossSpec().min_side == 16  # relu5_1: four pools
    assert preset_spec("torch-tutorial").min_side == 4  # conv3_1: two pools
    assert LossSpec(content_layers=("conv1_1",), style_layers=("relu1_1",)).min_side == 1
    assert LossSpec(style_layers=("pool5",)).min_side == 32


@pytest.mark.parametrize("device", DEVICES)
def test_real_engines_fail_at_15_and_run_at_16_and_17(caffe_export: Path, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the minimum comes from: both engines, both graphs, with the guide's pools; the
    refusal is lifted (min_side 1) to see what the engine itself does at 15 px."""
    monkeypatch.setattr(LossSpec, "min_side", property(lambda self: 1))
    engine = Engine(caffe_export, EngineConfig(device=device, precision="fp32", threads=1))
    for h in (16, 17):
        img = np.random.default_rng(h).random((1, 3, h, 40), dtype=np.float32)
        f = engine.features(img)
        targets = {k: v for k, v in f.items() if k.startswith("content_")}
        targets.update({k: v.reshape((1, *v.shape[-2:])) for k, v in f.items() if k.startswith("gram_")})
        targets["guide"] = np.ones((1, 1, h, 40), np.float32)
        r = engine.loss_grad(img, targets)
        assert np.isfinite(r.loss) and r.grad.shape == img.shape
    img = np.zeros((1, 3, 15, 40), np.float32)
    with pytest.raises(EngineError) as e:
        f = engine.features(img)  # OpenVINO fails here (pool shape inference) …
        targets = {k: v for k, v in f.items() if k.startswith("content_")}
        targets.update({k: v.reshape((1, *v.shape[-2:])) for k, v in f.items() if k.startswith("gram_")})
        targets["guide"] = np.ones((1, 1, 15, 40), np.float32)
        engine.loss_grad(img, targets)  # … onnxruntime when the loss graph runs
    assert not isinstance(e.value, ModelsError)
    msg = str(e.value)
    assert "1x3x15x40" in msg and "fp32" in msg and "re-export" not in msg
    assert ".cpp" not in msg and "site-packages" not in msg and "\n" not in msg


# ---- the plan's refusal ------------------------------------------------------------------
def test_plan_refuses_a_thin_content_with_the_minimum_and_a_size_that_works() -> None:
    s = RunSettings(size=64, iterations=5)
    with pytest.raises(SizeError) as e:
        plan_run(LossSpec(), (35, 160), s, "openvino", "fp32", None)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and e.value.exit_code == 2
    assert "160x35 would be 64x14" in msg and "16 px" in msg and "--size" in msg and "\n" not in msg
    works = int(msg.split("--size (")[1].split(" works")[0])
    plan_run(LossSpec(), (35, 160), s.replace(size=works), "openvino", "fp32", None)  # the way out is true
    with pytest.raises(SizeError):
        plan_run(LossSpec(), (35, 160), s.replace(size=works - 1), "openvino", "fp32", None)
    plan_run(preset_spec("torch-tutorial"), (35, 160), s, "openvino", "fp32", None)  # 4 px is its least


def test_every_stage_is_checked_and_scales_get_their_own_way_out() -> None:
    s = RunSettings(scales=(32, 64, 256), scale_iterations=(1, 1, 1))
    with pytest.raises(SizeError, match=r"stage 1 \(32 px\).*start --scales at 71 px"):
        check_sizes(LossSpec(), (35, 160), s)
    check_sizes(LossSpec(), (35, 160), s.replace(scales=(71, 128, 256)))


def test_styles_are_checked_at_size_times_style_scale() -> None:
    s = RunSettings(size=256, iterations=5)
    check_sizes(LossSpec(), (256, 256), s, styles=[(20, 200)])  # 256x26 at 256 px
    with pytest.raises(SizeError, match=r"style 2 200x10 would be 256x13 .*--style-scale"):
        check_sizes(LossSpec(), (256, 256), s, styles=[(256, 256), (10, 200)])
    with pytest.raises(SizeError, match="style 200x20 would be 51x5"):
        check_sizes(LossSpec(), (256, 256), s.replace(style_scale=0.2), styles=[(20, 200)])
    check_sizes(LossSpec(), (256, 256), s, masks=[(1, 400)])  # masks are resized to the content


def test_engine_refuses_what_the_plan_was_not_told_about(caffe_export: Path) -> None:
    engine = Engine(caffe_export, EngineConfig(device=DEVICES[0], precision="fp32", threads=1))
    with pytest.raises(SizeError, match="8x8 px has a side under 16 px"):
        engine.features(np.zeros((1, 3, 8, 8), np.float32))
    assert not engine._runners  # refused before any engine compiled for it


def test_cli_refuses_a_thin_content_before_the_engine_loads(caffe_export: Path, tmp_path: Path) -> None:
    pano, style = _image(tmp_path / "pano.png", 35, 160), _image(tmp_path / "style.png", 64, 64)
    base = ["stylize", str(pano), str(style), "-o", str(tmp_path / "out.png"), "--models", str(caffe_export), "--size", "64"]
    for extra in ([], ["--dry-run"]):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 2, r.output
        line = _error_line(r.output)
        assert "16 px" in line and "--size" in line and "re-export" not in line
        assert "stage 1/" not in r.output  # the dry-run refuses too, not prints a plan
    assert not (tmp_path / "out.png").exists()


def test_cli_refuses_a_thin_style_in_the_plan_naming_it(caffe_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxstyle.runtime import engine as engine_module

    built: list[str] = []
    real = engine_module.make_runner
    monkeypatch.setattr(engine_module, "make_runner", lambda *a, **k: built.append(a[2]) or real(*a, **k))
    content, pano = _image(tmp_path / "c.png", 48, 64), _image(tmp_path / "pano.png", 35, 160)
    base = ["stylize", str(content), str(pano), "-o", str(tmp_path / "out.png"), "--models", str(caffe_export), "--size", "64"]
    for extra in ([], ["--dry-run"]):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 2, r.output
        line = _error_line(r.output)
        assert line.startswith("error: style") and "16 px" in line and "re-export" not in line
    assert built == []  # refused by the plan: no graph was compiled or loaded


# ---- an honest diagnosis -----------------------------------------------------------------
def _copy(caffe_export: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(caffe_export, folder)
    return folder


@pytest.mark.parametrize("device", DEVICES)
def test_a_graph_that_does_not_parse_blames_the_folder(caffe_export: Path, tmp_path: Path, device: str) -> None:
    folder = _copy(caffe_export, tmp_path)
    graph = folder / "features.onnx"
    graph.write_bytes(os.urandom(graph.stat().st_size))  # same size: past the manifest's byte check
    engine = Engine(folder, EngineConfig(device=device, precision="fp32", threads=1))
    with pytest.raises(ModelsError, match="re-export"):
        engine.features(np.zeros((1, 3, 32, 32), np.float32))
    content, style = _image(tmp_path / "c.png", 32, 32), _image(tmp_path / "s.png", 32, 32)
    r = runner.invoke(app, ["stylize", str(content), str(style), "-o", str(tmp_path / "o.png"), "--models", str(folder),
                            "--size", "32", "--iterations", "1", "--device", device, "--precision", "fp32"])
    assert r.exit_code == 5, r.output
    line = _error_line(r.output)
    assert "features.onnx" in line and "re-export" in line and ".cpp" not in line


def test_a_truncated_graph_blames_the_folder(caffe_export: Path, tmp_path: Path) -> None:
    folder = _copy(caffe_export, tmp_path)
    graph = folder / "loss_grad.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    content, style = _image(tmp_path / "c.png", 32, 32), _image(tmp_path / "s.png", 32, 32)
    r = runner.invoke(app, ["stylize", str(content), str(style), "-o", str(tmp_path / "o.png"), "--models", str(folder),
                            "--size", "32", "--iterations", "1"])
    assert r.exit_code == 5, r.output
    assert "loss_grad.onnx" in _error_line(r.output)


@pytest.mark.parametrize("device", DEVICES)
def test_a_shape_the_engine_cannot_take_is_the_engines_error(
    caffe_export: Path, tmp_path: Path, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the plan's minimum lifted, an 8 px side reaches the engine: exit 1, the stage, graph,
    shape and device in one line, no C++ source or package path; -v shows the engine's text."""
    monkeypatch.setattr(LossSpec, "min_side", property(lambda self: 1))
    content, style = _image(tmp_path / "c.png", 8, 64), _image(tmp_path / "s.png", 64, 64)
    args = ["stylize", str(content), str(style), "-o", str(tmp_path / "o.png"), "--models", str(caffe_export),
            "--size", "64", "--iterations", "1", "--device", device, "--precision", "fp32"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    line = _error_line(r.output)
    assert "could not compile" in line or "could not run" in line
    assert "1x3x8x64" in line and "fp32" in line and ("OpenVINO CPU" in line if device == "openvino" else "CPUExecutionProvider" in line)
    assert "re-export" not in line and ".cpp" not in line and "site-packages" not in line and "Traceback" not in r.output
    assert "-v" in line
    rv = runner.invoke(app, ["-v", *args])
    assert rv.exit_code == 1
    assert "Traceback" in rv.output and "The above exception was the direct cause" in rv.output
    cause = "pooling_shape_inference_util.hpp" if device == "openvino" else "SpaceToDepth"
    assert cause in rv.output
    assert _error_line(rv.output).startswith("error: ")


# ---- the one-line texts --------------------------------------------------------------------
def test_engine_message_drops_source_locations_and_package_paths() -> None:
    assert engine_message(RuntimeError(OV_POOL)).startswith("Kernel after dilation has size (dim: 2)")
    parse = "Check 'm_model->ParseFromIstream(&model_file)' failed at src/frontends/onnx/frontend/src/core/graph_iterator_proto.cpp:563:\nFrontEnd API failed with GeneralFailure:\nModel can't be parsed\n"
    assert engine_message(RuntimeError(parse)) == "Model can't be parsed"
    lib = "Exception from src/inference/src/cpp/core.cpp:112:\n[ GENERAL_ERROR ] in /x/.venv/lib/python3.12/site-packages/openvino/libs/libopenvino.so\n"
    assert engine_message(RuntimeError(lib)) == "[ GENERAL_ERROR ] in libopenvino.so"
    ort = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. Name:'c1' "
           "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/nn/conv.cc:42 Compute bad shape")
    assert engine_message(RuntimeError(ort)) == "FAIL : Conv node 'c1': Compute bad shape"


def test_engine_failure_picks_the_exit_code() -> None:
    e = engine_failure(RuntimeError(OV_POOL), "compile", "features", (1, 3, 15, 40), "OpenVINO CPU fp32")
    assert type(e) is EngineError and e.exit_code == 1 and (e.stage, e.graph, e.shape) == ("compile", "features", "1x3x15x40")
    assert str(e).startswith("OpenVINO CPU fp32 could not compile the features graph for an image of 1x3x15x40 (Kernel")
    oom = engine_failure(RuntimeError("std::bad_alloc"), "run", "loss_grad", (1, 3, 4096, 4096), "OpenVINO CPU bf16")
    assert oom.exit_code == 1 and "smaller --size" in str(oom)
    gpu = engine_failure(RuntimeError("CUDA failure 100: no CUDA-capable device is detected"), "compile", "loss_grad", None, "CUDAExecutionProvider fp32")
    assert isinstance(gpu, DeviceError) and gpu.exit_code == 8 and "any size" in str(gpu) and "--device" in str(gpu)


def test_ort_parse_failures_are_told_from_engine_failures() -> None:
    def err(name: str, text: str) -> Exception:
        return type(name, (Exception,), {})(text)

    assert is_parse_failure(err("InvalidProtobuf", "Load model from x failed:Protobuf parsing failed."))
    assert is_parse_failure(err("NoSuchFile", "x"))
    assert is_parse_failure(err("Fail", "Load model from /m/loss_grad.onnx failed: external data out of bounds"))
    assert not is_parse_failure(err("Fail", "Non-zero status code returned while running Conv node"))
    assert not is_parse_failure(err("RuntimeException", "bad_alloc"))
    assert not is_parse_failure(err("EPFail", "TensorRT EP failed to create engine"))


def test_verbose_is_a_global_option_with_one_line_help() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "--verbose" in r.output and "-v" in r.output
