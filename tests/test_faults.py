"""Bad models folders, interruptions, kills, memory limits and numerical faults (issue 4)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxstyle.errors import ResourceError, engine_message
from onnxstyle.runtime.stylizer import Stylizer
from onnxstyle.runtime.settings import RunSettings
from onnxstyle.runtime.image_io import read_png_text
from onnxstyle.runtime.memory import check_fits, estimate_run_bytes
from onnxstyle.spec import LossSpec

from helpers import DATA, cli_env

CONTENT, STYLE = DATA / "tubingen.png", DATA / "starry_night.png"


def stylize_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxstyle.cli", "stylize", *args], capture_output=True, text=True, env=cli_env(), timeout=timeout
    )


def error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture()
def models_copy(caffe_export: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(caffe_export, dst)
    return dst


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _corrupt_same_size(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[:4096] = os.urandom(4096)
    p.write_bytes(bytes(data))


def _old_format(p: Path) -> None:
    m = json.loads((p.parent / "manifest.json").read_text())
    m["format_version"] = 0
    (p.parent / "manifest.json").write_text(json.dumps(m))


def _other_weights_hash(p: Path) -> None:
    m = json.loads((p.parent / "manifest.json").read_text())
    m["weights"]["sha256"] = "0" * 64
    (p.parent / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda p: p.unlink(), "loss_grad.onnx is missing"),
        (_truncate, "truncated or replaced"),
        (_corrupt_same_size, "cannot be loaded"),
        (_old_format, "format version 0"),
        (_other_weights_hash, "not the pinned"),
        (lambda p: (p.parent / "manifest.json").write_text("{not json"), "not valid JSON"),
    ],
)
def test_damaged_models_folder(models_copy: Path, tmp_path: Path, damage, needle: str) -> None:  # type: ignore[no-untyped-def]
    damage(models_copy / "loss_grad.onnx")
    out = tmp_path / "o.png"
    r = stylize_cli(str(CONTENT), str(STYLE), "-o", str(out), "--models", str(models_copy), "--size", "32", "--iterations", "2")
    assert r.returncode == 5
    line = error_line(r)
    assert needle in line and "onnxstyle export" in line and f"--out {models_copy}" in line
    assert not out.exists()


def test_models_of_other_layers_than_requested(caffe_export: Path, tmp_path: Path) -> None:
    r = stylize_cli(str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), "--models", str(caffe_export), "--preset", "tutorial")
    assert r.returncode == 5
    line = error_line(r)
    assert "not torch-tutorial" in line and "conv2_2" in line and "onnxstyle export --preset torch-tutorial" in line
    r = stylize_cli(str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), "--models", str(caffe_export), "--pooling", "avg")
    assert r.returncode == 5 and "max pooling, not avg" in error_line(r)
    r = stylize_cli(str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), "--models", str(caffe_export), "--weights", "torchvision")
    assert r.returncode == 5 and "not torchvision" in error_line(r)


def test_memory_estimate_refuses_up_front(caffe_export: Path, tmp_path: Path) -> None:
    spec = LossSpec()
    # Beyond the fixed part (libraries, weights) the estimate grows with the pixel count.
    s = RunSettings()
    base = estimate_run_bytes(spec, 64, 64, s)
    a, b = estimate_run_bytes(spec, 512, 512, s), estimate_run_bytes(spec, 1024, 1024, s)
    assert 3.5 < (b - base) / (a - base) < 4.5
    with pytest.raises(ResourceError, match="GiB"):
        check_fits(spec, 512, 512, "lbfgs", 20, available=100 * 2**20)
    t0 = time.monotonic()
    r = stylize_cli(str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), "--models", str(caffe_export), "--size", "40000")
    assert r.returncode == 11
    assert time.monotonic() - t0 < 30
    line = error_line(r)
    assert "GiB" in line and "available" in line and "--size" in line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_best_image_and_exits(caffe_export: Path, tmp_path: Path, sig: int, code: int) -> None:
    out = tmp_path / "o.png"
    p = subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cli", "stylize", str(CONTENT), str(STYLE), "-o", str(out),
         "--models", str(caffe_export), "--size", "64", "--iterations", "100000", "--save-every", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "o_00005.png").exists():
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.stderr else ""
        time.sleep(0.1)
    p.send_signal(sig)
    t0 = time.monotonic()
    _, stderr = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert p.returncode == code, stderr
    assert "Traceback" not in stderr
    meta = json.loads(read_png_text(out)["onnxstyle"])
    assert meta["interrupted"] is True and meta["evaluations"] >= 5
    img = cv2.imread(str(out))
    assert img.shape == (48, 64, 3)


def test_kill_never_leaves_a_truncated_output(caffe_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    shutil.copy(CONTENT, out)  # an existing output must stay whole until a new one is complete
    before = out.read_bytes()
    p = subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cli", "stylize", str(CONTENT), str(STYLE), "-o", str(out),
         "--models", str(caffe_export), "--size", "64", "--iterations", "100000", "--save-every", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(),
    )
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("o_*.png"))) < 3:
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    p.kill()
    p.wait(30)
    assert out.read_bytes() == before
    for f in tmp_path.glob("o_*.png"):  # every intermediate that exists is a whole image
        assert cv2.imread(str(f)) is not None, f.name
        assert read_png_text(f)["onnxstyle"]


def test_injected_faults_roll_back_and_keep_pixels_finite(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = RunSettings(size=48, iterations=30)
    calls = {"n": 0}

    def inject(x: np.ndarray, loss: float, grad: np.ndarray) -> tuple[float, np.ndarray]:
        calls["n"] += 1
        if calls["n"] in (5, 11):
            grad = grad.copy()
            grad[0, 0, :4, :4] = np.nan
        if calls["n"] == 17:
            loss = float("inf")
        return loss, grad

    r = Stylizer(caffe_export).run(tubingen, [starry], s, objective_hook=inject)
    assert r.faults == 3 and r.error is None and r.evaluations == 30
    assert np.isfinite(r.image).all()
    assert r.loss < r.history[0]


def test_repeated_faults_stop_with_message_but_write_the_image(caffe_export: Path, tmp_path: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = RunSettings(size=48, iterations=40)

    def always_nan_after_8(x: np.ndarray, loss: float, grad: np.ndarray, n=[0]) -> tuple[float, np.ndarray]:  # noqa: B006
        n[0] += 1
        return (loss if n[0] <= 8 else float("nan")), grad

    r = Stylizer(caffe_export).run(tubingen, [starry], s, objective_hook=always_nan_after_8)
    assert r.error is not None and "faults" in r.error
    assert np.isfinite(r.image).all() and r.loss == min(r.history)


def test_engine_message_is_one_printable_line() -> None:
    # What OpenVINO quoted back from a damaged file: raw bytes decoded with surrogateescape.
    raw = b"Error parsing node '\x90\xff\x01abc'\nsecond line".decode("utf-8", "surrogateescape")
    msg = engine_message(RuntimeError(raw))
    msg.encode("utf-8")  # strict: must not raise
    assert msg == "Error parsing node '???abc'"
    assert engine_message(RuntimeError("")) == "RuntimeError"
    assert len(engine_message(RuntimeError("x" * 1000))) == 200
