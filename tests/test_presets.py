"""Each preset's exported loss against the notebook's formula, written here in numpy from the
issue's equations (features from torch's VGG19, everything after that independent of our graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxstyle.export.exporter import export
from onnxstyle.reference.vgg import VGG19
from onnxstyle.runtime.stylizer import Stylizer
from onnxstyle.runtime.settings import PRESET_RUN, RunSettings, preset_run_settings
from onnxstyle.spec import preset_spec
from onnxstyle.exportdir import ExportSettings, export_settings_for


def img(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    x = np.stack([0.5 + 0.35 * np.sin(5 * xx + 2 * c) * np.cos(4 * yy - c) for c in range(3)]) + 0.05 * rng.standard_normal((3, h, w))
    return np.clip(x, 0.03, 0.97)[None].astype(np.float32)


def feats(model: VGG19, x: np.ndarray, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy().astype(np.float64)[0] for k, v in model(torch.from_numpy(x), layers).items()}


def numpy_loss(preset: str, model: VGG19, x: np.ndarray, content: np.ndarray, style: np.ndarray) -> float:
    spec = preset_spec(preset)
    layers = (*spec.content_layers, *spec.style_layers)
    fx, fc, fs = feats(model, x, layers), feats(model, content, layers), feats(model, style, layers)
    H, W = x.shape[2:]

    def gram(f: np.ndarray, norm: str) -> np.ndarray:
        c, h, w = f.shape
        m = f.reshape(c, h * w)
        g = m @ m.T
        return {"chw": g / (c * h * w), "hw": g / (h * w), "none": g}[norm]

    img01 = x[0].astype(np.float64)
    if preset in ("torch-tutorial", "torch-notebook"):
        # content = mean((F-P)²); style = Σ_l mean((G-A)²) with G = FFᵀ/(CHW); 1·content + 1e6·style
        cl = spec.content_layers[0]
        content_l = np.mean((fx[cl] - fc[cl]) ** 2)
        style_l = sum(np.mean((gram(fx[n], "chw") - gram(fs[n], "chw")) ** 2) for n in spec.style_layers)
        return 1.0 * content_l + 1e6 * style_l
    if preset == "tf-tutorial":
        # style = (1e-2/5)·Σ mean((G-A)²), G = FFᵀ/(HW); content = 1e4·mean((F-P)²); 30·Σ|Δ|
        style_l = 1e-2 / 5 * sum(np.mean((gram(fx[n], "hw") - gram(fs[n], "hw")) ** 2) for n in spec.style_layers)
        content_l = 1e4 * np.mean((fx["relu5_2"] - fc["relu5_2"]) ** 2)
        tv = np.abs(np.diff(img01, axis=1)).sum() + np.abs(np.diff(img01, axis=2)).sum()
        return style_l + content_l + 30 * tv
    if preset == "keras-example":
        # 0.025·Σ(F-P)² + (1/5)·Σ_l Σ(G-A)²/(4·3²·(H·W)²) + 1e-4·Σ((a+b)^1.25) on the 0-255 image
        content_l = 0.025 * np.sum((fx["relu5_2"] - fc["relu5_2"]) ** 2)
        style_l = sum(np.sum((gram(fx[n], "none") - gram(fs[n], "none")) ** 2) / (4.0 * 9 * (H * W) ** 2) for n in spec.style_layers) / 5
        p = img01 * 255.0
        a = (p[:, :-1, :-1] - p[:, 1:, :-1]) ** 2
        b = (p[:, :-1, :-1] - p[:, :-1, 1:]) ** 2
        return content_l + style_l + 1e-4 * np.sum((a + b) ** 1.25)
    raise AssertionError(preset)


PRESETS = ["torch-tutorial", "torch-notebook", "tf-tutorial", "keras-example"]


@pytest.fixture(scope="module")
def model(caffe_weights) -> VGG19:  # type: ignore[no-untyped-def]
    return VGG19(caffe_weights, last="relu5_2").eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presets")
    return {p: export(ExportSettings(preset_spec(p), p, "caffe"), root / p, validate=False).folder for p in PRESETS}


def run_graph(folder: Path, x: np.ndarray, content: np.ndarray, style: np.ndarray) -> tuple[float, np.ndarray, ort.InferenceSession, dict]:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    f = ort.InferenceSession(str(folder / "features.onnx"), o, providers=["CPUExecutionProvider"])
    lg = ort.InferenceSession(str(folder / "loss_grad.onnx"), o, providers=["CPUExecutionProvider"])
    names = [v.name for v in f.get_outputs()]

    def run_features(im: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, f.run(None, {"image": im, "guide": np.ones((1, 1, *im.shape[2:]), np.float32)})))

    c, s = run_features(content), run_features(style)
    wanted = {i.name for i in lg.get_inputs()}
    t = {k: (c if k.startswith("content_") else s)[k] for k in names if k in wanted}
    t["guide"] = np.ones((1, 1, *x.shape[2:]), np.float32)
    t["temporal_target"], t["temporal_map"] = np.zeros_like(x), np.zeros((1, 1, *x.shape[2:]), np.float32)
    loss, grad = lg.run(["loss", "grad"], {"image": x, **t})
    return float(loss), grad, lg, t


@pytest.mark.parametrize("preset", PRESETS)
def test_loss_equals_the_notebook_formula(preset: str, exports: dict[str, Path], model: VGG19) -> None:
    content, style, x = img(41, 53, 0), img(50, 44, 1), img(41, 53, 2)
    loss, _, _, _ = run_graph(exports[preset], x, content, style)
    assert loss == pytest.approx(numpy_loss(preset, model, x, content, style), rel=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_gradient_passes_finite_differences(preset: str, exports: dict[str, Path]) -> None:
    content, style, x = img(37, 43, 3), img(40, 40, 4), img(37, 43, 5)
    _, grad, lg, t = run_graph(exports[preset], x, content, style)
    g = grad.astype(np.float64)
    gn = float(np.linalg.norm(g))
    v = g / gn
    eps = 1e-2
    lp = float(lg.run(["loss"], {"image": (x + eps * v).astype(np.float32), **t})[0])
    lm = float(lg.run(["loss"], {"image": (x - eps * v).astype(np.float32), **t})[0])
    assert (lp - lm) / (2 * eps) == pytest.approx(gn, rel=2e-2)
    rng = np.random.default_rng(0)
    for _ in range(2):
        r = rng.standard_normal(x.shape)
        r /= np.linalg.norm(r)
        lp = float(lg.run(["loss"], {"image": (x + eps * r).astype(np.float32), **t})[0])
        lm = float(lg.run(["loss"], {"image": (x - eps * r).astype(np.float32), **t})[0])
        assert abs((lp - lm) / (2 * eps) - float((g * r).sum())) <= 2e-2 * gn


@pytest.mark.parametrize("preset", PRESETS)
def test_short_run_with_the_presets_optimizer_lowers_the_loss(preset: str, exports: dict[str, Path], tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = preset_run_settings(preset, size=48, iterations=12)
    assert s.optimizer == PRESET_RUN[preset]["optimizer"]
    if preset == "keras-example":
        s = s.replace(rounds=3)
    r = Stylizer(exports[preset]).run(tubingen, [starry], s)
    assert r.loss == min(r.history) < r.history[0], r.history
    assert np.isfinite(r.image).all()


def test_preset_run_settings() -> None:
    assert preset_run_settings("tutorial") == preset_run_settings("torch-tutorial")
    tf = preset_run_settings("tf-tutorial")
    assert (tf.optimizer, tf.adam_lr, tf.adam_betas, tf.adam_eps, tf.adam_tf_epsilon, tf.iterations) == ("adam", 0.02, (0.99, 0.999), 0.1, True, 1000)
    k = preset_run_settings("keras-example", iterations=100)
    assert (k.optimizer, k.rounds, k.size, k.fit, k.iterations) == ("keras-lbfgs", 20, 400, "height", 100)
    assert preset_run_settings("gatys") == RunSettings()
    with pytest.raises(ValueError, match="unknown preset"):
        preset_run_settings("picasso")


def test_torchvision_weights_preferred_for_torch_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    said: list[str] = []
    assert export_settings_for("torch-tutorial", log=said.append).weights == "caffe"
    assert "Caffe weights stand in" in said[0]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    assert export_settings_for("torch-tutorial").weights == "torchvision"
    assert export_settings_for("torch-tutorial", weights="caffe").weights == "caffe"
    assert export_settings_for("gatys").weights == "caffe"


def test_manifest_records_the_preset(exports: dict[str, Path]) -> None:
    import json

    for p, folder in exports.items():
        assert json.loads((folder / "manifest.json").read_text())["preset"] == p
