"""Perceptual controls (issue 6): colour, coarse-to-fine, masks, sweep sheets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxstyle.errors import ModelsError
from onnxstyle.export.exporter import export
from onnxstyle import stylize
from onnxstyle.runtime.stylizer import Stylizer
from onnxstyle.runtime.settings import RunSettings
from onnxstyle.runtime.image_io import read_png_text, resize_longest, resize_to
from onnxstyle.runtime.optimize import Iterate
from onnxstyle.commands.sheet import sheet_layout
from onnxstyle.spec import LossSpec
from onnxstyle.exportdir import ExportSettings

from helpers import DATA, cli_env


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain (unguided) graph form that format 1 and 2 folders hold."""
    return export(ExportSettings(LossSpec(guided=False)), tmp_path_factory.mktemp("plain") / "p", validate=False).folder


def as_version(folder: Path, version: int) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["format_version"] = version
    if version == 1:
        for k in ("guided", "content_reduction", "style_reduction", "tv", "tv_scale"):
            m["spec"].pop(k)  # fields that version 1 did not have
    (folder / "manifest.json").write_text(json.dumps(m))


def ycrcb(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb, np.float32), cv2.COLOR_RGB2YCrCb)


def test_luminance_mode_keeps_the_content_chroma(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    kw = dict(size=64, iterations=40)
    out = stylize(tubingen, starry, caffe_export, preserve_color="luminance", **kw)
    plain = stylize(tubingen, starry, caffe_export, **kw)
    c = ycrcb(resize_longest(tubingen, 64))
    o, p = ycrcb(out), ycrcb(plain)
    chroma_err = np.abs(o[..., 1:] - c[..., 1:]).mean()
    assert chroma_err < 0.01, chroma_err
    assert np.abs(p[..., 1:] - c[..., 1:]).mean() > 3 * chroma_err  # plain transfer does recolour
    assert np.abs(o[..., 0] - c[..., 0]).mean() > 0.03  # and the luminance was stylized


def test_histogram_mode_recolours_the_style_towards_the_content(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    kw = dict(size=64, iterations=40)
    hist = stylize(tubingen, starry, caffe_export, preserve_color="histogram", **kw)
    plain = stylize(tubingen, starry, caffe_export, **kw)
    target = resize_longest(tubingen, 64).reshape(-1, 3).mean(0)
    assert np.abs(hist.reshape(-1, 3).mean(0) - target).sum() < np.abs(plain.reshape(-1, 3).mean(0) - target).sum()


def test_coarse_to_fine_ends_at_the_last_size_and_chains_stages(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = RunSettings(scales=(32, 64), scale_iterations=(6, 4), size=64)
    seen: list[Iterate] = []
    r = Stylizer(caffe_export).run(tubingen, [starry], s, seen.append)
    assert r.image.shape == (1, 3, 48, 64)
    assert [it.step for it in seen] == list(range(1, 11)) and r.evaluations == 10
    first_small, first_big = seen[0].image, seen[6].image
    assert first_small.shape[2:] == (24, 32) and first_big.shape[2:] == (48, 64)
    # Stage 2 starts from stage 1's best image, upsampled — not from the content.
    best_small = min(seen[:6], key=lambda it: it.loss).image[0].transpose(1, 2, 0)
    up = resize_to(best_small, 48, 64)  # the runtime's one resizer (bicubic when enlarging)
    np.testing.assert_allclose(first_big[0].transpose(1, 2, 0), up, atol=1e-5)
    with pytest.raises(ValueError, match="rise"):
        Stylizer(caffe_export).run(tubingen, [starry], s.replace(scales=(64, 32)))


def test_mask_keeps_its_black_region_near_the_content(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    mask = np.zeros((72, 96), np.float32)
    mask[:, 48:] = 1.0
    out = stylize(tubingen, starry, caffe_export, masks=[mask], size=96, iterations=60)
    d = np.abs(out - tubingen).mean(axis=2)
    black, white = d[:, :40].mean(), d[:, 56:].mean()
    assert black < white / 3, (black, white)


def test_two_masks_put_each_style_in_its_region(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray, scream: np.ndarray) -> None:
    left = np.zeros((72, 96), np.float32)
    left[:, :48] = 1.0
    out = stylize(tubingen, [starry, scream], caffe_export, masks=[left, 1 - left], size=96, iterations=60)
    mu_starry, mu_scream = starry.reshape(-1, 3).mean(0), scream.reshape(-1, 3).mean(0)
    lh, rh = out[:, :40].reshape(-1, 3).mean(0), out[:, 56:].reshape(-1, 3).mean(0)
    assert np.abs(lh - mu_starry).sum() < np.abs(lh - mu_scream).sum()
    assert np.abs(rh - mu_scream).sum() < np.abs(rh - mu_starry).sum()


def test_one_default_export_serves_masks_and_plain_runs(caffe_export: Path) -> None:
    m = json.loads((caffe_export / "manifest.json").read_text())
    assert m["format_version"] == 4 and m["spec"]["guided"] is True
    names = {i["name"] for i in m["graphs"]["loss_grad"]["inputs"]}
    assert "guide" in names and "guide" in {i["name"] for i in m["graphs"]["features"]["inputs"]}


def test_all_ones_guide_is_exactly_the_plain_loss(caffe_export: Path, plain_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    """The guided form with no mask computes what the plain form computes: same targets,
    same loss terms, same gradient, so the default export costs nothing in results."""
    from onnxstyle.runtime.engine import Engine
    from onnxstyle.runtime.image_io import to_nchw

    content, style = to_nchw(resize_longest(tubingen, 64)), to_nchw(resize_longest(starry, 64))
    x = np.clip(content + 0.1 * np.random.default_rng(0).standard_normal(content.shape).astype(np.float32), 0, 1)
    from onnxstyle.runtime.settings import EngineConfig

    exact = EngineConfig(device="cpu")  # onnxruntime fp32 both sides: the graphs alone differ
    guided, plain = Engine(caffe_export, exact), Engine(plain_export, exact)
    gt, pt = guided.features(content), plain.features(content)
    gs, ps = guided.features(style), plain.features(style)
    tg = {**{k: v for k, v in gt.items() if k.startswith("content_")}, **{k: v for k, v in gs.items() if k.startswith("gram_")}}
    tp = {**{k: v for k, v in pt.items() if k.startswith("content_")}, **{k: v for k, v in ps.items() if k.startswith("gram_")}}
    for k, v in tp.items():
        np.testing.assert_allclose(tg[k].reshape(v.shape), v, rtol=1e-5, atol=1e-6 * float(np.abs(v).max()))
    a = guided.loss_grad(x, {**tg, "guide": np.ones((1, 1, *x.shape[2:]), np.float32)})
    b = plain.loss_grad(x, tp)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    for k in b.terms:
        assert a.terms[k] == pytest.approx(b.terms[k], rel=1e-4, abs=1e-9)
    assert np.abs(a.grad - b.grad).max() <= 1e-5 * np.abs(b.grad).max()


def test_masks_on_an_old_plain_folder_name_the_fix_once(plain_export: Path, tmp_path: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    old = tmp_path / "v2"
    shutil.copytree(plain_export, old)
    as_version(old, 2)
    with pytest.raises(ModelsError, match="re-export with: onnxstyle export") as e:
        Stylizer(old).run(tubingen, [starry], RunSettings(size=48, iterations=1), masks=[np.ones((4, 4), np.float32)])
    assert "--guided" not in str(e.value) and "version 2" in str(e.value)


@pytest.mark.parametrize("version", [1, 2])
def test_old_models_folders_still_run(plain_export: Path, tmp_path: Path, tubingen: np.ndarray, starry: np.ndarray, version: int) -> None:
    old = tmp_path / f"v{version}"
    shutil.copytree(plain_export, old)
    as_version(old, version)
    out = stylize(tubingen, starry, old, size=48, iterations=3)
    assert out.shape == (36, 48, 3)


def test_version_2_guided_folder_still_runs_masks(caffe_export: Path, plain_export: Path, tmp_path: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    """Format 2's guided folders had a guided loss graph beside a plain features graph."""
    old = tmp_path / "v2g"
    shutil.copytree(caffe_export, old)
    shutil.copy(plain_export / "features.onnx", old / "features.onnx")
    m, pm = (json.loads((d / "manifest.json").read_text()) for d in (old, plain_export))
    m["graphs"]["features"] = pm["graphs"]["features"]
    m["files"]["features.onnx"] = pm["files"]["features.onnx"]
    m["format_version"] = 2
    (old / "manifest.json").write_text(json.dumps(m))
    mask = np.zeros((72, 96), np.float32)
    mask[:, 48:] = 1.0
    out = stylize(tubingen, starry, old, masks=[mask], size=48, iterations=3)
    assert out.shape == (36, 48, 3)


def test_sweep_sheet_holds_every_panel(caffe_export: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    env = cli_env(tmp_path / "cache")
    # The sweep finds its graphs in the cache: seed it with the session's export.
    from onnxstyle.exportdir import default_export_dir
    from onnxstyle.exportdir import export_settings_for

    target = Path(env["ONNXSTYLE_CACHE"]) / "exports" / default_export_dir(export_settings_for("gatys")).name
    target.parent.mkdir(parents=True)
    shutil.copytree(caffe_export, target)
    r = subprocess.run(
        [sys.executable, "-m", "onnxstyle.cli", "sweep", str(DATA / "tubingen.png"), str(DATA / "starry_night.png"),
         "-o", str(sheet), "--vary", "style-weight=1,100", "--vary", "init=content,noise", "--size", "40", "--iterations", "8"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    meta = json.loads(read_png_text(sheet)["onnxstyle"])
    assert len(meta["panels"]) == 4 and meta["panels"][0].startswith("style-weight=1, init=content")
    img = cv2.imread(str(sheet))[:, :, ::-1].astype(np.float32) / 255
    # Panels are 30x40 enlarged ×6 to 180x240; find each in the documented layout.
    lay = sheet_layout(4, 2, (180, 240), title=True, row_labels=True, col_labels=True)
    assert img.shape[:2] == lay.size
    crops = []
    for i in range(4):
        y, x = lay.panel_origin(i)
        crops.append(img[y : y + 180, x : x + 240])
    for c in crops:
        assert c.std() > 0.05  # a picture, not background
    # Different settings, different pictures; noise init looks unlike content init.
    assert np.abs(crops[0] - crops[2]).mean() > 0.02
    assert np.abs(crops[0] - crops[1]).mean() > 0.01


def test_coarse_to_fine_is_the_default_above_512() -> None:
    assert RunSettings(size=512, iterations=300).stages() == [(512, 300)]
    assert RunSettings(size=1024, iterations=300).stages() == [(512, 150), (1024, 300)]
    assert RunSettings(size=1024, iterations=300, coarse_to_fine_above=0).stages() == [(1024, 300)]
    assert RunSettings(size=1024, scales=(256, 1024)).stages() == [(256, 300), (1024, 300)]
    assert RunSettings(size=1024, iterations=300).total_evaluations() == 450
