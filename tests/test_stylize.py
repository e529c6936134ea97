"""End-to-end stylization through the Python API, judged by torch (an independent VGG)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import onnxstyle
from onnxstyle.reference.vgg import VGG19, gram
from onnxstyle.runtime.stylizer import Stylizer
from onnxstyle.runtime.settings import RunSettings
from onnxstyle.runtime.image_io import resize_longest, resize_to, to_nchw
from onnxstyle.runtime.optimize import Iterate
from onnxstyle.spec import LossSpec


@pytest.fixture(scope="module")
def torch_vgg(caffe_weights) -> VGG19:  # type: ignore[no-untyped-def]
    return VGG19(caffe_weights, last="relu5_1").eval()


def _feats(model: VGG19, img: np.ndarray) -> dict[str, torch.Tensor]:
    spec = LossSpec()
    with torch.no_grad():
        return model(torch.from_numpy(to_nchw(img)), (*spec.content_layers, *spec.style_layers))


def gram_distance(model: VGG19, img: np.ndarray, style: np.ndarray) -> float:
    a, b = _feats(model, img), _feats(model, style)
    return float(
        np.mean([((gram(a[n], "hw") - gram(b[n], "hw")).pow(2).sum() / gram(b[n], "hw").pow(2).sum()).item() for n in LossSpec().style_layers])
    )


def content_distance(model: VGG19, img: np.ndarray, content: np.ndarray) -> float:
    a, b = _feats(model, img)["relu4_2"], _feats(model, content)["relu4_2"]
    return float(((a - b).pow(2).sum() / b.pow(2).sum()).item())


def test_defaults_at_96px_transfer_the_style(caffe_export: Path, torch_vgg: VGG19, tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = RunSettings(size=96, iterations=100)
    result = Stylizer(caffe_export).run(tubingen, [starry], s)
    out = result.image[0].transpose(1, 2, 0)
    content = resize_longest(tubingen, 96)
    style = resize_longest(starry, 96)
    before = gram_distance(torch_vgg, content, style)
    after = gram_distance(torch_vgg, out, style)
    assert after <= 0.4 * before, (before, after)  # fell by at least 60%
    # The content stays bounded: a relative error below 1 (the photo's own feature energy)
    # and closer to the photo than the painting itself is.
    style_as_content = cv2.resize(style, (content.shape[1], content.shape[0]))
    dc = content_distance(torch_vgg, out, content)
    assert dc < 1.0 and dc < content_distance(torch_vgg, style_as_content, content)
    assert result.evaluations == 100
    assert result.loss == min(result.history)


def test_blend_targets_are_the_weighted_grams(caffe_export: Path, torch_vgg: VGG19, tubingen: np.ndarray, starry: np.ndarray, scream: np.ndarray) -> None:
    s = RunSettings(size=64, style_blend=(3.0, 1.0))
    st = Stylizer(caffe_export)
    t = st.targets(resize_longest(tubingen, 64), [starry, scream], s)
    g1, g2 = _feats(torch_vgg, resize_longest(starry, 64)), _feats(torch_vgg, resize_longest(scream, 64))
    for n in LossSpec().style_layers:
        expect = 0.75 * gram(g1[n], "hw") + 0.25 * gram(g2[n], "hw")
        np.testing.assert_allclose(t[f"gram_{n}"], expect.numpy(), rtol=2e-3, atol=1e-3 * float(expect.abs().max()))
    t1 = st.targets(resize_longest(tubingen, 64), [starry, scream], s.replace(style_blend=(1.0, 0.0)))
    np.testing.assert_allclose(t1["gram_relu3_1"], gram(g1["relu3_1"], "hw").numpy(), rtol=2e-3, atol=1e-2)
    with pytest.raises(ValueError, match="2 style images"):
        st.targets(tubingen, [starry, scream], s.replace(style_blend=(1.0,)))


def test_style_scale_resizes_the_style(caffe_export: Path, torch_vgg: VGG19, tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = RunSettings(size=64, style_scale=0.5)
    t = Stylizer(caffe_export).targets(resize_longest(tubingen, 64), [starry], s)
    g = _feats(torch_vgg, resize_longest(starry, 32))
    np.testing.assert_allclose(t["gram_relu2_1"], gram(g["relu2_1"], "hw").numpy(), rtol=2e-3, atol=1e-2)


def _first_image(st: Stylizer, s: RunSettings, content: np.ndarray, styles: list[np.ndarray], init_image: np.ndarray | None = None) -> np.ndarray:
    seen: list[Iterate] = []
    st.run(content, styles, s.replace(iterations=1), seen.append, init_image)
    return seen[0].image[0].transpose(1, 2, 0)


def test_init_modes(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray, scream: np.ndarray) -> None:
    s = RunSettings(size=48)
    st = Stylizer(caffe_export)
    content = resize_longest(tubingen, 48)
    np.testing.assert_allclose(_first_image(st, s.replace(init="content"), tubingen, [starry]), content, atol=1e-6)
    style_img = resize_to(starry, 36, 48)  # the runtime's one resizer
    np.testing.assert_allclose(_first_image(st, s.replace(init="style"), tubingen, [starry]), style_img, atol=1e-5)
    noise = _first_image(st, s.replace(init="noise"), tubingen, [starry])
    assert noise.shape == (36, 48, 3) and abs(noise.mean() - 0.5) < 0.05 and noise.std() > 0.25
    other = _first_image(st, s.replace(init="image"), tubingen, [starry], scream)
    np.testing.assert_allclose(other, resize_to(scream, 36, 48), atol=1e-5)


def test_seed_determinism_on_cpu(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = RunSettings(size=48, iterations=8, init="noise", seed=7)
    a = onnxstyle.stylize(tubingen, starry, caffe_export, **s.__dict__)
    b = onnxstyle.stylize(tubingen, [starry], caffe_export, **s.__dict__)
    c = onnxstyle.stylize(tubingen, [starry], caffe_export, **s.replace(seed=8).__dict__)
    assert a.shape == (36, 48, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.05


def test_adam_lowers_the_loss(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = RunSettings(size=48, iterations=30, optimizer="adam", adam_lr=0.02)
    r = Stylizer(caffe_export).run(tubingen, [starry], s)
    assert r.history[-1] < 0.7 * r.history[0]


def test_weights_override_reaches_the_graph(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    s = RunSettings(size=48, iterations=1, content_weight=0.0)
    r = Stylizer(caffe_export).run(tubingen, [starry], s)
    assert r.terms["loss_content_relu4_2"] == 0.0
    s2 = s.replace(content_weight=None, style_weight=0.0, init="noise")
    r2 = Stylizer(caffe_export).run(tubingen, [starry], s2)
    assert all(v == 0.0 for k, v in r2.terms.items() if k.startswith("loss_style"))
