"""Reduced-precision validation limits (issue 21, item 5): derived per machine from the reference's
own bf16 draws, never from one machine's numbers; fp32 only where the CPU has no native bf16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import onnxstyle.export.validate as v
from onnxstyle.export.validate import BF16_LOSS_SLACK, BF16_SLACK, Bf16Draw, Bf16Storage, bf16_limits_from


def _is_bf16(t: torch.Tensor) -> bool:
    return bool(torch.equal(t, t.to(torch.bfloat16).float()))


def test_limits_follow_the_measured_draws_and_nothing_else() -> None:
    quiet = [Bf16Draw(0.05, 3e-3, 1e-2), Bf16Draw(0.07, 2e-3, 4e-3)]
    (loss, loss_cos), (grad, cos) = bf16_limits_from(quiet)
    # The worst draw of each statistic, times the slack: no floor, no machine's constant.
    assert grad == pytest.approx(BF16_SLACK * 0.07) and loss == pytest.approx(BF16_LOSS_SLACK * 1e-2)
    assert cos == loss_cos == pytest.approx(1 - BF16_SLACK * 3e-3)
    # A machine whose bf16 is twice as noisy shows it in its draws, and gets twice the room.
    noisy = [Bf16Draw(2 * d.grad_err, 2 * d.grad_cos_gap, 2 * d.loss_err) for d in quiet]
    (loss2, _), (grad2, cos2) = bf16_limits_from(noisy)
    assert grad2 == pytest.approx(2 * grad) and loss2 == pytest.approx(2 * loss)
    assert 1 - cos2 == pytest.approx(2 * (1 - cos))
    with pytest.raises(ValueError):
        bf16_limits_from([])


def test_bf16_limits_are_computed_from_this_machines_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """_bf16_limits is bf16_limits_from of what _bf16_draws measures here, whatever that is."""
    seen: list[tuple[int, ...]] = []

    def fake_draws(model, spec, image, targets, ref_loss, ref_grad):  # type: ignore[no-untyped-def]
        seen.append(image.shape)
        return [Bf16Draw(0.3, 0.04, 0.02)]

    monkeypatch.setattr(v, "_bf16_draws", fake_draws)
    got = v._bf16_limits(None, None, np.zeros((1, 3, 5, 6), np.float32), {}, 1.0, np.zeros((1, 3, 5, 6)))  # type: ignore[arg-type]
    assert seen == [(1, 3, 5, 6)]
    assert got == bf16_limits_from([Bf16Draw(0.3, 0.04, 0.02)])


def test_bf16_storage_rounds_every_stored_tensor_and_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 4, 6, 6, generator=g).requires_grad_(True)
    w = torch.randn(8, 4, 3, 3, generator=g)
    target = torch.rand(8, 8, generator=g)
    with Bf16Storage():
        f = torch.nn.functional.conv2d(x, w, padding=1)
        m = torch.relu(f).reshape(8, -1)
        gram = m @ m.t()
        loss = ((gram - target) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, x)
    assert _is_bf16(f) and _is_bf16(m) and _is_bf16(gram)  # each op's output, stored in bf16
    # The gradient reaching the input came through a bf16-rounded conv-output gradient: it differs
    # from fp32's by bf16's order, not fp32's.
    f32 = torch.nn.functional.conv2d(x, w, padding=1)
    m32 = torch.relu(f32).reshape(8, -1)
    (grad32,) = torch.autograd.grad(((m32 @ m32.t() - target) ** 2).sum(), x)
    rel = float((grad - grad32).abs().max() / grad32.abs().max())
    assert 1e-5 < rel < 0.1, rel


def test_draws_measure_bf16_on_a_small_model(caffe_weights) -> None:  # type: ignore[no-untyped-def]
    from onnxstyle.reference.vgg import VGG19, reference_loss_and_grad
    from onnxstyle.spec import LossSpec

    spec = LossSpec()
    model = VGG19(caffe_weights, last=spec.deepest).eval()
    rng = np.random.default_rng(0)
    image = v.smooth_image(rng, 20, 24)
    with torch.no_grad():
        content = v.reference_features(model, spec, torch.from_numpy(v.smooth_image(rng, 20, 24)))
        style = v.reference_features(model, spec, torch.from_numpy(v.smooth_image(rng, 24, 20)))
    targets = {k: t for k, t in content.items() if k.startswith("content_")}
    targets.update({k: t for k, t in style.items() if k.startswith("gram_")})
    targets["guide"] = torch.ones(1, 1, 20, 24)
    if spec.temporal:
        targets.update({k: torch.from_numpy(t) for k, t in v.no_temporal_inputs(20, 24).items()})
    ref_loss, ref_grad, _ = reference_loss_and_grad(model, spec, torch.from_numpy(image), targets)
    draws = v._bf16_draws(model, spec, image, targets, ref_loss, ref_grad.numpy(), count=3)
    assert len(draws) == 4  # autocast, then the emulated draws
    for d in draws:
        assert 1e-4 < d.grad_err < 0.5 and 0 < d.grad_cos_gap < 0.05, d  # bf16's order, not fp32's
    assert len({d.grad_err for d in draws[1:]}) == 3  # the nudged draws round differently


def test_no_native_bf16_checks_fp32_only(caffe_export: Path, caffe_weights, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import onnxstyle.runtime.backends as backends
    from onnxstyle.reference.vgg import VGG19
    from onnxstyle.spec import LossSpec

    if not backends.openvino_info()[0]:
        pytest.skip("OpenVINO is not installed")
    monkeypatch.setattr(backends, "openvino_info", lambda: (True, False))

    def no_bf16(*args: object) -> None:
        raise AssertionError("bf16 limits derived on a CPU without native bf16")

    monkeypatch.setattr(v, "_bf16_limits", no_bf16)
    model = VGG19(caffe_weights, last=LossSpec().deepest).eval()
    checks = v._other_backends(caffe_export, model, LossSpec(), 37, 45, 0)
    assert {c.graph for c in checks} == {"openvino fp32"} and all(c.ok() for c in checks)
