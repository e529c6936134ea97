"""The foundation (issue 15): one export identity, interrupts handled once, images refused
before they hurt, whole progress lines in logs, every output validated, the GPU path's options."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxstyle.exportdir import export_command
from onnxstyle.errors import ImageError
from onnxstyle.export.exporter import export
from onnxstyle.runtime.image_io import load_image, probe_image, read_png_text
from onnxstyle.exportdir import ExportSettings, export_key, export_settings_for

from helpers import DATA, cli_env, random_torchvision_state, run_cli_without_torch

CONTENT, STYLE = DATA / "tubingen.png", DATA / "starry_night.png"


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxstyle.cli", *args], capture_output=True, text=True, env=env or cli_env(), timeout=timeout)


def error_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in r.stderr, r.stderr
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]


# ---- one export identity ---------------------------------------------------------------------
def test_export_key_includes_the_weights_files_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(random_torchvision_state(1), a)
    torch.save(random_torchvision_state(2), b)
    ka, kb = export_settings_for(weights=str(a)).key(), export_settings_for(weights=str(b)).key()
    assert ka != kb
    shutil.copy(a, tmp_path / "same.pth")
    assert export_settings_for(weights=str(tmp_path / "same.pth")).key() == ka  # content, not path
    # The one function every caller goes through, with or without the sha filled in.
    from onnxstyle.exportdir import file_sha256

    assert export_key(ExportSettings(weights=str(a), weights_sha256=file_sha256(str(a)))) == ka
    assert export_settings_for(weights="caffe").key() != ka


@pytest.mark.slow
def test_printed_fix_command_lands_where_stylize_looks(tmp_path: Path) -> None:
    """export --weights FILE, then a torch-free stylize --weights FILE finds it; a changed file is
    refused with a fix command, and running that command makes stylize work again."""
    env = cli_env(tmp_path / "cache")
    weights = tmp_path / "mine.pth"
    torch.save(random_torchvision_state(3), weights)
    out = tmp_path / "o.png"
    stylize = ["stylize", str(CONTENT), str(STYLE), "-o", str(out), "--weights", str(weights), "--size", "40", "--iterations", "2", "-q"]
    r = cli("export", "--weights", str(weights), env=env)
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "cache" / "exports" / export_settings_for(weights=str(weights)).key()) in r.stdout
    r = run_cli_without_torch(stylize, env)
    assert r.returncode == 0, r.stderr

    torch.save(random_torchvision_state(4), weights)  # same path, other weights
    r = run_cli_without_torch(stylize, env)
    assert r.returncode == 5
    (line,) = error_lines(r)
    fix = re.search(r"run `([^`]+)`", line)
    assert fix, line
    assert fix.group(1) == export_command(export_settings_for(weights=str(weights)))
    r = cli(*fix.group(1).split()[1:], env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli_without_torch(stylize, env)
    assert r.returncode == 0, r.stderr


# ---- every command torch-free, from one default export ------------------------------------------
@pytest.mark.slow
def test_masks_and_sweep_run_without_torch_from_the_default_export(caffe_export: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "cache")
    mask = tmp_path / "mask.png"
    m = np.zeros((72, 96), np.uint8)
    m[:, 48:] = 255
    cv2.imwrite(str(mask), m)
    r = run_cli_without_torch(
        ["stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "m.png"), "--models", str(caffe_export),
         "--mask", str(mask), "--size", "48", "--iterations", "3", "-q"], env)
    assert r.returncode == 0, r.stderr
    r = run_cli_without_torch(
        ["sweep", str(CONTENT), str(STYLE), "-o", str(tmp_path / "s.png"), "--models", str(caffe_export),
         "--vary", "style-weight=1,10", "--size", "40", "--iterations", "2", "-q"], env)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(read_png_text(tmp_path / "s.png")["onnxstyle"])["panels"]) == 2


# ---- interrupts, handled once ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sweep_interrupted_writes_the_panels_done(caffe_export: Path, tmp_path: Path, sig: int, code: int) -> None:
    sheet = tmp_path / "sheet.png"
    env = {**cli_env(), "ONNXSTYLE_PROGRESS_INTERVAL": "0"}
    p = subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cli", "sweep", str(CONTENT), str(STYLE), "-o", str(sheet), "--models", str(caffe_export),
         "--vary", "style-weight=1,10,100", "--size", "40", "--iterations", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert p.stderr is not None
    deadline = time.monotonic() + 120
    step = 0
    while step < 410:  # the first panel (400 evaluations) is done, the second under way
        line = p.stderr.readline()
        assert line and time.monotonic() < deadline, "sweep ended or stalled before the signal"
        m = re.match(r"sweep (\d+)/1200 ", line)
        step = int(m.group(1)) if m else step
    p.send_signal(sig)
    t0 = time.monotonic()
    _, rest = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert p.returncode == code, rest
    assert "Traceback" not in rest
    meta = json.loads(read_png_text(sheet)["onnxstyle"])
    assert meta["complete"] is False
    assert len(meta["panels"]) == 2 and "interrupted" in meta["panels"][1] and "interrupted" not in meta["panels"][0]


@pytest.fixture(scope="module")
def overflowing_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights so large that the activations overflow: every loss is non-finite."""
    root = tmp_path_factory.mktemp("overflow")
    state = {k: v * 1e30 if k.endswith("weight") else v for k, v in random_torchvision_state(5).items()}
    torch.save(state, root / "huge.pth")
    return export(ExportSettings(weights=str(root / "huge.pth")), root / "models", validate=False).folder


@pytest.mark.slow
def test_sweep_of_faulting_panels_writes_the_sheet_and_exits_9(overflowing_export: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    r = cli("sweep", str(CONTENT), str(STYLE), "-o", str(sheet), "--models", str(overflowing_export),
            "--vary", "style-weight=1,10", "--size", "40", "--iterations", "20")
    assert r.returncode == 9, r.stderr
    (line,) = error_lines(r)
    assert "2 panel(s) stopped after repeated numerical faults" in line
    meta = json.loads(read_png_text(sheet)["onnxstyle"])
    assert len(meta["panels"]) == 2 and all("stopped: faults" in p for p in meta["panels"])


def test_the_library_never_swallows_ctrl_c(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    """KeyboardInterrupt leaves the run as Interrupted, carrying the best result so far."""
    from onnxstyle.errors import Interrupted
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.settings import RunSettings

    for optimizer in ("lbfgs", "adam", "torch-lbfgs", "keras-lbfgs"):
        calls = {"n": 0}

        def hook(x: np.ndarray, loss: float, grad: np.ndarray) -> tuple[float, np.ndarray]:
            calls["n"] += 1
            if calls["n"] == 6:
                raise KeyboardInterrupt
            return loss, grad

        s = RunSettings(size=40, iterations=50, optimizer=optimizer, scales=(32, 40), rounds=2)
        with pytest.raises(Interrupted) as e:
            Stylizer(caffe_export).run(tubingen, [starry], s, objective_hook=hook)
        assert isinstance(e.value, KeyboardInterrupt)
        r = e.value.partial
        assert r is not None and r.interrupted and r.evaluations == 5, optimizer
        assert np.isfinite(r.image).all() and r.loss == min(r.history)


# ---- images refused before they hurt ---------------------------------------------------------
def _bomb_png(path: Path, side: int = 20000) -> None:
    """A 1-bit PNG declaring side × side pixels, all zero: a few hundred KB on disk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + side // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_in_under_a_second_and_200_mb(caffe_export: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb)
    assert bomb.stat().st_size < 2_000_000
    code = f"""
import sys, time
sys.argv = ["onnxstyle", "stylize", {str(bomb)!r}, {str(STYLE)!r}, "-o", {str(tmp_path / 'o.png')!r}, "--models", {str(caffe_export)!r}]
from onnxstyle.cli import main
t0 = time.perf_counter()
try:
    main()
except SystemExit as e:
    rc = e.code
took = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(rc, took, int(hwm) * 1024)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    rc, took, peak = r.stdout.split()
    assert int(rc) == 6, r.stderr
    assert float(took) < 1.0 and int(peak) < 200 * 2**20, (took, int(peak) / 2**20)
    line = r.stderr.strip()
    assert "20000x20000" in line and "400 M pixels" in line and "--max-pixels" in line
    assert not (tmp_path / "o.png").exists()
    # The limit is the user's to raise: the header then passes (nothing is decoded here).
    assert probe_image(bomb, max_pixels=500_000_000).pixels == 400_000_000
    with pytest.raises(ImageError, match="over the limit of 179 M"):
        probe_image(bomb)


def test_each_file_is_decoded_once_without_a_full_size_float_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    big = cv2.resize(cv2.imread(str(CONTENT)), (4000, 3000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(tmp_path / "big.png"), big)  # PNG: no reduced decoding possible
    calls: list[str] = []
    real = Image._getdecoder  # every decode of pixel data makes one decoder (per tile)
    monkeypatch.setattr(Image, "_getdecoder", lambda mode, name, *a: calls.append(name) or real(mode, name, *a))
    tracemalloc.start()
    rgb, _ = load_image(tmp_path / "big.png", max_side=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(calls) == 1 and rgb.shape == (192, 256, 3)
    # The 8-bit pixels (36 MB) and the file's bytes; a float copy at 4000x3000 would add 144 MB.
    assert peak < 80 * 2**20, peak / 2**20


def test_motion_photo_trailing_data_is_accepted_truncation_is_not(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.imread(str(CONTENT)))
    jpg = buf.tobytes()
    # A motion photo: the video follows the JPEG's end marker (its bytes contain 0xFFD8/0xFFD9 too).
    trailer = b"\x00\x00\x00\x18ftypmp42" + os.urandom(50_000) + b"\xff\xd8\xff\xd9"
    (tmp_path / "motion.jpg").write_bytes(jpg + trailer)
    rgb, _ = load_image(tmp_path / "motion.jpg")
    np.testing.assert_allclose(rgb, load_image_bytes(jpg, tmp_path), atol=1e-6)
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg")


def load_image_bytes(data: bytes, tmp: Path) -> np.ndarray:
    p = tmp / "plain.jpg"
    p.write_bytes(data)
    return load_image(p)[0]


# ---- progress in a log -------------------------------------------------------------------
def test_progress_without_a_terminal_is_whole_lines(caffe_export: Path, tmp_path: Path) -> None:
    env = {**cli_env(), "ONNXSTYLE_PROGRESS_INTERVAL": "0"}
    r = cli("stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), "--models", str(caffe_export),
            "--size", "40", "--iterations", "12", env=env)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("stylizing ")]
    pattern = re.compile(
        r"^stylizing (\d+)/12 \d+% \d+\.\d\d eval/s elapsed \d+:\d\d eta \d+:\d\d loss [\d.e+-]+ \(content [\d.e+-]+ style [\d.e+-]+\)$"
    )
    assert len(lines) >= 12
    for ln in lines:
        assert pattern.match(ln), ln
        assert "…" not in ln
    assert [int(pattern.match(ln).group(1)) for ln in lines][-1] == 12  # type: ignore[union-attr]


# ---- validation checks every output, collects every failure -------------------------------------------
def _scale_initializer(path: Path, name: str, factor: float) -> None:
    """A wrong export: the tensor ``name`` (a weight in weights.bin, or a kernel the graph derives
    from one, such as the backward's flipped ``convN_wT``) scaled by ``factor``; the manifest's
    byte counts are kept in step, so only validation can tell."""
    model = onnx.load(str(path), load_external_data=False)
    init = next((t for t in model.graph.initializer if t.name == name), None)
    if init is not None:  # stored in the shared file: scale it there
        info = {e.key: e.value for e in init.external_data}
        blob = path.parent / info["location"]
        data = bytearray(blob.read_bytes())
        start, length = int(info.get("offset", 0)), int(info["length"])
        values = np.frombuffer(bytes(data[start : start + length]), np.float32) * factor
        data[start : start + length] = values.astype(np.float32).tobytes()
        blob.write_bytes(bytes(data))
        return
    node = next(n for n in model.graph.node if name in n.output)
    node.output[list(node.output).index(name)] = name + "_unscaled"
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), name + "_factor"))
    model.graph.node.append(onnx.helper.make_node("Mul", [name + "_unscaled", name + "_factor"], [name]))
    path.write_bytes(model.SerializeToString())  # the weights stay in the shared file
    manifest = json.loads((path.parent / "manifest.json").read_text())
    manifest["files"][path.name]["bytes"] = path.stat().st_size
    (path.parent / "manifest.json").write_text(json.dumps(manifest))


def test_validation_reports_every_wrong_output(caffe_export: Path, tmp_path: Path, caffe_weights) -> None:  # type: ignore[no-untyped-def]
    from onnxstyle.export.validate import validate_export
    from onnxstyle.reference.vgg import VGG19
    from onnxstyle.spec import LossSpec

    model = VGG19(caffe_weights, last="relu5_1").eval()
    folder = tmp_path / "m"
    shutil.copytree(caffe_export, folder)
    listing = sorted(p.name for p in folder.iterdir())
    from onnxstyle.runtime.backends import openvino_info

    has_ov, bf16 = openvino_info()
    reports = validate_export(folder, model, LossSpec(), ((37, 45),))
    backends = [c.graph for c in reports[0].checks if c.graph.startswith("openvino")]
    assert reports[0].ok() and len(reports[0].checks) == 26 + len(backends)
    assert len(backends) == (2 * (1 + bf16) if has_ov else 0)  # loss and gradient per precision
    # A wrong backward kernel: the gradient fails, on every backend and precision; every
    # forward output and loss term still passes. (bf16 is held to 1.3x the worst of the
    # reference's own bf16 draws, about 0.08 of the max at 37x45 with these weights: a deep
    # kernel off by 20% is 0.24 off there, see export/validate.py.)
    _scale_initializer(folder / "loss_grad.onnx", "conv4_1_wT", 1.2)
    (bad,) = validate_export(folder, model, LossSpec(), ((37, 45),))
    assert {c.name for c in bad.failures()} == {"grad"}
    assert {c.graph for c in bad.failures()} == {"loss_grad", *backends}
    # A wrong forward kernel in features: every output at and past conv3_1 fails, all listed.
    _scale_initializer(folder / "features.onnx", "conv3_1_w", 1.5)
    (bad,) = validate_export(folder, model, LossSpec(), ((37, 45),))
    failed = {c.name for c in bad.failures() if c.graph == "features"}
    assert {"content_relu4_2", "gram_relu3_1", "gramsum_relu4_1", "gram_relu5_1"} <= failed
    assert not {"gram_relu1_1", "gram_relu2_1", "mass_relu3_1"} & failed
    assert all(np.isfinite(c.max_err) for c in bad.checks)
    # OpenVINO's compiled blobs went to the compiled cache, not into the folder.
    assert sorted(p.name for p in folder.iterdir()) == listing


# ---- the GPU path's options, built for real ---------------------------------------------------------
# Keys documented for onnxruntime's TensorRT and CUDA execution providers
# (onnxruntime.ai/docs/execution-providers/{TensorRT,CUDA}-ExecutionProvider.html).
TRT_DOCUMENTED = {
    "device_id", "user_compute_stream", "trt_max_workspace_size", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable", "trt_int8_calibration_table_name",
    "trt_int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core", "trt_engine_cache_enable",
    "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs", "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable", "trt_timing_cache_path",
    "trt_force_timing_cache", "trt_detailed_build_log", "trt_build_heuristics_enable", "trt_sparsity_enable",
    "trt_builder_optimization_level", "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes", "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable",
}
CUDA_DOCUMENTED = {
    "device_id", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search", "do_copy_in_default_stream",
    "cudnn_conv_use_max_workspace", "cudnn_conv1d_pad_to_nc1d", "enable_cuda_graph", "enable_skip_layer_norm_strict_mode",
    "use_tf32", "gpu_external_alloc", "gpu_external_free", "gpu_external_empty_cache", "prefer_nhwc",
}
PROFILE = re.compile(r"^[A-Za-z_][\w]*:\d+(x\d+)*(,[A-Za-z_][\w]*:\d+(x\d+)*)*$")


def test_gpu_provider_options_use_documented_keys_and_profile_every_dynamic_input(caffe_export: Path) -> None:
    from onnxstyle.exportdir import read_manifest
    from onnxstyle.runtime.engine import resolve_shape
    from onnxstyle.runtime.providers import CPU, CUDA, TRT, provider_options

    m = read_manifest(caffe_export)
    for graph in ("features", "loss_grad"):
        shapes = {i["name"]: resolve_shape(i["shape"], 384, 512, 2) for i in m.inputs(graph)}
        trt, cuda, cpu = provider_options([TRT, CUDA, CPU], caffe_export / "trt-cache", shapes, fp16=True, device_id=1)
        assert set(trt) <= TRT_DOCUMENTED and set(cuda) <= CUDA_DOCUMENTED and cpu == {}
        assert trt["device_id"] == cuda["device_id"] == 1 and trt["trt_fp16_enable"] is True
        assert cuda["cudnn_conv_algo_search"] in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
        profile = trt["trt_profile_opt_shapes"]
        assert PROFILE.match(profile), profile
        named = dict(item.split(":") for item in profile.split(","))
        dynamic = {i["name"] for i in m.inputs(graph) if any(isinstance(d, str) for d in i["shape"])}
        assert set(named) == dynamic  # every dynamic input, and no scalar weight
        assert named["image"] == "1x3x384x512"
    lg = {i["name"]: resolve_shape(i["shape"], 383, 511, 2) for i in m.inputs("loss_grad")}
    assert lg["content_relu4_2"] == (1, 512, 47, 63) and lg["gram_relu5_1"] == (2, 512, 512) and lg["guide"] == (2, 1, 383, 511)


class _FakeOrtValue:
    uploads: list[str] = []

    @classmethod
    def ortvalue_from_numpy(cls, a: np.ndarray, device: str, device_id: int) -> tuple[str, int]:
        cls.uploads.append(f"{a.shape}@{device}:{device_id}")
        return (device, id(a))


class _FakeBinding:
    def __init__(self) -> None:
        self.bound: dict[str, object] = {}

    def bind_output(self, name: str, device: str) -> None:
        self.bound[f"out:{name}"] = device

    def bind_ortvalue_input(self, name: str, value: object) -> None:
        self.bound[name] = value

    def get_outputs(self) -> list[object]:
        class _O:
            def numpy(self) -> np.ndarray:
                return np.zeros(1, np.float32)

        return [_O(), _O()]


class _FakeSession:
    def __init__(self) -> None:
        self.bindings = 0

    def io_binding(self) -> _FakeBinding:
        self.bindings += 1
        return _FakeBinding()

    def run_with_iobinding(self, binding: _FakeBinding) -> None:
        assert "image" in binding.bound


def test_cuda_path_uploads_and_binds_the_targets_once() -> None:
    from onnxstyle.runtime.backends import BackendChoice, OrtRunner
    from onnxstyle.runtime.providers import CPU, CUDA

    runner = OrtRunner.__new__(OrtRunner)
    runner.ort = type("ort", (), {"OrtValue": _FakeOrtValue})
    runner.choice = BackendChoice("onnxruntime", (CUDA, CPU), "fp32", 3, 1)
    runner.session, runner.gpu, runner._binding, runner._bound = _FakeSession(), True, None, {}
    _FakeOrtValue.uploads = []
    targets = {"gram_relu1_1": np.zeros((1, 64, 64), np.float32), "guide": np.ones((1, 1, 8, 8), np.float32)}
    for i in range(5):
        runner.run({"image": np.full((1, 3, 8, 8), i, np.float32), **targets}, ["loss", "grad"])
    images = [u for u in _FakeOrtValue.uploads if u.startswith("(1, 3, 8, 8)")]
    assert len(images) == 5 and len(_FakeOrtValue.uploads) == 5 + 2  # each target once
    assert all(u.endswith("@cuda:3") for u in _FakeOrtValue.uploads)
    assert runner.session.bindings == 1
