"""Issue 20: the --size/--scales rule is RunSettings' own, so every front end gives the same
outcome. Over HTTP a job {"size": 128, "scales": [64, 96]} once came back 96x72 with its style
side taken from 128, while the CLI refused it. Here: the CLI, batch, video and the Python API
(the service has its test in test_serve_schema.py) refuse a size that differs from the last
scale with one message, and with scales alone make the last scale the output's size."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxstyle
from helpers import DATA, cli_env
from onnxstyle.runtime.image_io import load_image, probe_image, read_png_text
from onnxstyle.runtime.settings import RunSettings, build_run_settings

MESSAGE = "--size 48 differs from the last of --scales (40)"
CONTENT, STYLE = DATA / "tubingen.png", DATA / "starry_night.png"


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxstyle.cli", *args], capture_output=True, text=True, env=cli_env(cache), timeout=600)


def test_the_builder_owns_the_rule() -> None:
    with pytest.raises(ValueError) as e:
        build_run_settings("gatys", size=48, scales="32,40")
    assert str(e.value) == MESSAGE
    for scales in ("32,40", [32, 40], (32, 40)):  # a command line's text, JSON's list, Python's tuple
        s = build_run_settings("gatys", scales=scales, scale_iterations=[1, 1])
        assert (s.size, s.stages(), s.style_side()) == (40, [(32, 1), (40, 1)], 40)
    # The dataclass itself can never disagree with its schedule: the last scale is the size.
    assert RunSettings(size=512, scales=(64, 96)).size == 96
    assert RunSettings.from_dict(build_run_settings("gatys", scales=[32, 40]).to_dict()).size == 40


def test_the_cli_and_batch_refuse_it_with_one_message(tmp_path: Path, caffe_export: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CONTENT, folder / "c.png")
    common = ["--size", "48", "--scales", "32,40", "--models", str(caffe_export)]
    runs = {
        "stylize": cli("stylize", str(CONTENT), str(STYLE), "-o", str(tmp_path / "o.png"), *common, cache=tmp_path),
        "batch": cli("batch", str(folder), str(STYLE), "-o", str(tmp_path / "out"), *common, cache=tmp_path),
        "video": cli("video", str(folder), str(STYLE), "-o", str(tmp_path / "v"), "--size", "48", "--scales", "32,40", cache=tmp_path),
    }
    for name in ("stylize", "batch"):
        r = runs[name]
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.strip() == f"error: {MESSAGE}", (name, r.stderr)
    # video has no --scales (one schedule per frame): a usage error naming the option
    assert runs["video"].returncode == 2 and "--scales" in runs["video"].stderr
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_scales_alone_set_the_output_size_in_batch_and_the_api(tmp_path: Path, caffe_export: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CONTENT, folder / "c.png")
    r = cli("batch", str(folder), str(STYLE), "-o", str(tmp_path / "out"), "--scales", "32,40", "--scale-iterations", "2,2",
            "--models", str(caffe_export), cache=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "c.png"
    h, w = probe_image(out).oriented
    assert (w, h) == (40, 30)  # Tübingen is 4:3: the last scale is the longest side
    import json

    assert json.loads(read_png_text(out)["onnxstyle"])["settings"]["size"] == 40

    content = load_image(CONTENT)[0]
    style = load_image(STYLE, 64)[0]
    with pytest.raises(ValueError) as e:
        onnxstyle.stylize(content, style, models=caffe_export, size=48, scales=(32, 40))
    assert str(e.value) == MESSAGE
    image = onnxstyle.stylize(content, style, models=caffe_export, scales=(32, 40), scale_iterations=(2, 2))
    assert image.shape == (30, 40, 3) and np.isfinite(image).all()
