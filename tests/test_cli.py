"""The command line, through typer's CliRunner and through a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from onnxstyle.cli import app
from onnxstyle.runtime.image_io import read_png_text

from helpers import DATA, cli_env

runner = CliRunner()
CONTENT, STYLE, STYLE2 = DATA / "tubingen.png", DATA / "starry_night.png", DATA / "the_scream.png"


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxstyle.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(),
        timeout=timeout,
    )


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_export_command_writes_validated_graphs(tmp_path: Path) -> None:
    out = tmp_path / "models"
    r = runner.invoke(app, ["export", "--out", str(out), "--pooling", "avg", "--style-layers", "relu1_1,relu2_1"])
    assert r.exit_code == 0, r.output
    assert "validated 37x45" in r.output and "cosine 1.0000" in r.output
    assert f"wrote {out}" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["pooling"] == "avg" and m["layers"]["style"] == ["relu1_1", "relu2_1"]
    assert m["layers"]["deepest"] == "relu4_2"


def test_export_rejects_unknown_layers(tmp_path: Path) -> None:
    r = run_cli("export", "--out", str(tmp_path / "m"), "--style-layers", "relu9_9")
    assert r.returncode == 2
    assert "relu9_9" in one_line_error(r)
    assert not (tmp_path / "m").exists()


def test_stylize_writes_png_with_settings(caffe_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    r = runner.invoke(
        app,
        ["stylize", str(CONTENT), str(STYLE), "-o", str(out), "--size", "64", "--iterations", "6",
         "--models", str(caffe_export), "--style-weight", "50", "--save-every", "3"],
    )
    assert r.exit_code == 0, r.output
    img = cv2.imread(str(out))
    assert img.shape == (48, 64, 3)
    meta = json.loads(read_png_text(out)["onnxstyle"])
    assert meta["settings"]["style_weight"] == 50 and meta["evaluations"] == 6
    assert meta["interrupted"] is False
    assert "6 evaluations" in r.output and "wrote" in r.output
    # --save-every 3: intermediate images beside the output, each a real stylization step.
    assert (tmp_path / "o_00003.png").is_file() and (tmp_path / "o_00006.png").is_file()
    assert json.loads(read_png_text(tmp_path / "o_00003.png")["onnxstyle"])["evaluations"] == 3


def test_demo_without_arguments(caffe_export: Path, tmp_path: Path) -> None:
    r = run_cli("stylize", "--size", "48", "--iterations", "2", "--models", str(caffe_export), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --quiet
    assert cv2.imread(str(tmp_path / "stylized.png")).shape == (36, 48, 3)


@pytest.mark.parametrize(
    "make,code,needle",
    [
        (lambda d: d / "missing.png", 2, "does not exist"),
        (lambda d: (d / "empty.png").write_bytes(b"") and None or d / "empty.png", 6, "empty"),
        (lambda d: (d / "text.png").write_text("hello") and None or d / "text.png", 6, "not an image"),
    ],
)
def test_bad_content_file(make, code: int, needle: str, caffe_export: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = make(tmp_path)
    out = tmp_path / "o.png"
    r = run_cli("stylize", str(bad), str(STYLE), "-o", str(out), "--models", str(caffe_export), "--size", "32")
    assert r.returncode == code
    line = one_line_error(r)
    assert needle in line and bad.name in line
    assert not out.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--style-blend", "1,2"], "--style-blend has 2 weights for 1 style images"),
        (["--iterations", "0"], "--iterations"),
        (["--size", "31"], "--size"),
        (["--style-weight", "-1"], "--style-weight"),
        (["--init", "nowhere.png"], "--init"),
    ],
)
def test_nonsense_options_are_usage_errors(args: list[str], needle: str, caffe_export: Path, tmp_path: Path) -> None:
    r = run_cli("stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), "--models", str(caffe_export), *args)
    assert r.returncode == 2
    assert needle in one_line_error(r)
    assert not (tmp_path / "o.png").exists()


def test_output_refused_before_work(caffe_export: Path, tmp_path: Path) -> None:
    for out, code, needle in (
        (tmp_path / "nodir" / "o.png", 7, "does not exist"),
        (tmp_path / "o.gif", 7, "unknown output format"),
        (CONTENT, 7, "also an input"),
    ):
        r = run_cli("stylize", str(CONTENT), str(STYLE), "-o", str(out), "--models", str(caffe_export), timeout=60)
        assert r.returncode == code, r.stderr
        assert needle in one_line_error(r)


def test_missing_models_folder_names_the_fix(tmp_path: Path) -> None:
    r = run_cli("stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), "--models", str(tmp_path / "none"))
    assert r.returncode == 5
    assert "onnxstyle export" in one_line_error(r)


def test_blend_of_two_styles(caffe_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.png"
    r = run_cli(
        "stylize", str(CONTENT), str(STYLE), str(STYLE2), "--style-blend", "0.7,0.3", "-o", str(out),
        "--models", str(caffe_export), "--size", "48", "--iterations", "3", "-q",
    )
    assert r.returncode == 0, r.stderr
    meta = json.loads(read_png_text(out)["onnxstyle"])
    assert meta["styles"] == [str(STYLE), str(STYLE2)] and meta["settings"]["style_blend"] == [0.7, 0.3]


def test_info_lists_providers_and_exports(caffe_export: Path) -> None:
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0
    assert "CPUExecutionProvider" in r.output and "onnxruntime" in r.output


def test_cuda_request_without_gpu_is_one_line(caffe_export: Path, tmp_path: Path) -> None:
    r = run_cli("stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), "--models", str(caffe_export), "--device", "cuda")
    assert r.returncode == 8
    assert "CUDAExecutionProvider" in one_line_error(r)


def test_rgba_content_keeps_its_alpha(caffe_export: Path, tmp_path: Path) -> None:
    bgr = cv2.imread(str(CONTENT))
    alpha = np.zeros(bgr.shape[:2], np.uint8)
    alpha[:, 48:] = 255
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([bgr, alpha]))
    out = tmp_path / "o.png"
    r = run_cli("stylize", str(tmp_path / "rgba.png"), str(STYLE), "-o", str(out), "--models", str(caffe_export),
                "--size", "96", "--iterations", "2", "-q")
    assert r.returncode == 0, r.stderr
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.shape == (72, 96, 4)
    np.testing.assert_array_equal(back[:, :, 3], alpha)
