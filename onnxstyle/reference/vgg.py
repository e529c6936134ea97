"""VGG19 in torch with canonical layer names, cut after the deepest layer in use.

This is the reference the exported graphs are validated against: torch autograd of
:func:`reference_loss` is the gradient our hand-built adjoint graph must reproduce.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import LossSpec
from ..layers import LAYER_INDEX, LAYERS
from .weights import VGGWeights


class VGG19(nn.Module):
    """VGG19 feature layers up to ``last`` (inclusive), taking RGB [0,1] NCHW input."""

    def __init__(self, weights: VGGWeights, last: str = "pool5", pooling: str = "max") -> None:
        super().__init__()
        m, b = weights.preprocessing.affine()
        self.register_buffer("prep_m", torch.from_numpy(m))
        self.register_buffer("prep_b", torch.from_numpy(b))
        self.pooling = pooling
        self.names = [name for name, *_ in LAYERS[: LAYER_INDEX[last] + 1]]
        self.convs = nn.ModuleDict()
        for name, kind, cin, cout in LAYERS[: LAYER_INDEX[last] + 1]:
            if kind == "conv":
                conv = nn.Conv2d(cin, cout, 3, padding=1)
                w, bias = weights.convs[name]
                conv.weight.data.copy_(torch.from_numpy(w))
                conv.bias.data.copy_(torch.from_numpy(bias))
                conv.requires_grad_(False)
                self.convs[name] = conv

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,njhw->nihw", self.prep_m, x) + self.prep_b.view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]:
        taps = set(taps)
        out: dict[str, torch.Tensor] = {}
        h = self.preprocess(x)
        for name in self.names:
            if name.startswith("conv"):
                h = self.convs[name](h)
            elif name.startswith("relu"):
                h = F.relu(h)
            elif self.pooling == "max":
                h = F.max_pool2d(h, 2, 2)
            else:
                h = F.avg_pool2d(h, 2, 2)
            if name in taps:
                out[name] = h
        return out


def gram(f: torch.Tensor, norm: str) -> torch.Tensor:
    """Gram matrix of a [1,C,H,W] feature map, normalized as the spec says."""
    _, c, h, w = f.shape
    m = f.reshape(c, h * w)
    g = m @ m.t()
    if norm == "none":
        return g
    return g / (h * w) if norm == "hw" else g / (c * h * w)


def reference_features(
    model: VGG19, spec: LossSpec, image: torch.Tensor, guide: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """What features.onnx computes: content maps and Grams (guided: per region, with the raw
    sums and masses). ``guide`` [R,1,H,W] defaults to all ones for a guided spec."""
    taps = model(image, (*spec.content_layers, *spec.style_layers))
    out = {f"content_{n}": taps[n] for n in spec.content_layers}
    if not spec.guided:
        out.update({f"gram_{n}": gram(taps[n], spec.gram_norm) for n in spec.style_layers})
        return out
    if guide is None:
        guide = image.new_ones((1, 1, *image.shape[2:]))
    guides = _reference_guides(model, guide)
    for n in spec.style_layers:
        raw, mass = _guided_sums(taps[n], guides[n])
        out[f"gram_{n}"] = _normalize(spec, raw, mass, taps[n].shape[1])
        out[f"gramsum_{n}"] = raw
        out[f"mass_{n}"] = mass
    return out


def _guided_sums(f: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_p (f_p m_p)(f_p m_p)ᵀ per region [R,C,C] and Σ_p m_p² [R]."""
    _, c, h, w = f.shape
    fm = (f[0][None] * m).reshape(m.shape[0], c, h * w)
    return fm @ fm.transpose(1, 2), (m**2).sum(dim=(1, 2, 3))


def _normalize(spec: LossSpec, raw: torch.Tensor, mass: torch.Tensor, c: int) -> torch.Tensor:
    if spec.gram_norm == "none":
        return raw
    g = raw / (mass + 1e-8).view(-1, 1, 1)
    return g / c if spec.gram_norm == "chw" else g


def reference_loss(
    model: VGG19, spec: LossSpec, image: torch.Tensor, targets: dict[str, torch.Tensor], weights: dict[str, float] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of README's equations, written directly in torch; returns (total, terms)."""
    w = spec.weight_defaults()
    w.update(weights or {})
    taps = model(image, (*spec.content_layers, *spec.style_layers))
    terms: dict[str, torch.Tensor] = {}
    img_hw = image.shape[2] * image.shape[3]
    for n in spec.content_layers:
        p = targets[f"content_{n}"]
        err = F.mse_loss(taps[n], p, reduction=spec.content_reduction)
        if spec.relative:
            err = err / (p.pow(2).mean() + 1e-8)
        terms[f"loss_content_{n}"] = w["content_weight"] * w[f"content_weight_{n}"] * err
    guides = _reference_guides(model, targets["guide"]) if spec.guided else {}
    for n in spec.style_layers:
        a = targets[f"gram_{n}"]
        if spec.guided:
            err = _guided_err(spec, taps[n], guides[n], a, img_hw)
        else:
            err = _style_err(spec, gram(taps[n], spec.gram_norm), a, img_hw)
        terms[f"loss_style_{n}"] = w["style_weight"] * w[f"style_weight_{n}"] * err
    x = image * spec.tv_scale
    if spec.tv == "keras":
        a_ = (x[:, :, :-1, :-1] - x[:, :, 1:, :-1]).pow(2)
        b_ = (x[:, :, :-1, :-1] - x[:, :, :-1, 1:]).pow(2)
        tv = (a_ + b_).pow(1.25).sum()
    else:
        dx, dy = x[:, :, 1:, :] - x[:, :, :-1, :], x[:, :, :, 1:] - x[:, :, :, :-1]
        tv = dx.abs().sum() + dy.abs().sum() if spec.tv == "sum_abs" else dx.pow(2).mean() + dy.pow(2).mean()
    terms["loss_tv"] = w["tv_weight"] * tv
    if spec.temporal:
        c, target = targets["temporal_map"], targets["temporal_target"]
        terms["loss_temporal"] = w["temporal_weight"] * (c * (image - target) ** 2).sum() / image.numel()
    total = torch.stack(list(terms.values())).sum()
    return total, terms


def _reference_guides(model: VGG19, guide: torch.Tensor) -> dict[str, torch.Tensor]:
    """The guide at every layer's resolution, average-pooled as the graphs do."""
    out = {}
    g = guide
    for name in model.names:
        if name.startswith("pool"):
            g = F.avg_pool2d(g, 2, 2)
        out[name] = g
    return out


def _guided_err(spec: LossSpec, f: torch.Tensor, m: torch.Tensor, a: torch.Tensor, img_hw: int) -> torch.Tensor:
    """Σ_r err(G_r, A_r) with G_r = (F∘m_r)(F∘m_r)ᵀ / Σ m_r² (Gatys et al. 2017)."""
    raw, mass = _guided_sums(f, m)
    g = _normalize(spec, raw, mass, f.shape[1])
    return sum((_style_err(spec, g[r], a[r], img_hw) for r in range(m.shape[0])), f.new_zeros(()))


def _style_err(spec: LossSpec, g: torch.Tensor, a: torch.Tensor, img_hw: int) -> torch.Tensor:
    """One Gram's error against its target, reduced as the spec says."""
    if spec.style_reduction == "keras":  # channels = 3 and size = the image's rows × cols, as in the notebook
        err = (g - a).pow(2).sum() / (4.0 * 3**2 * img_hw**2)
    else:
        err = F.mse_loss(g, a, reduction=spec.style_reduction)
    if spec.relative:
        err = err / (a.pow(2).mean() + 1e-8)
    return err


def reference_loss_and_grad(
    model: VGG19, spec: LossSpec, image: torch.Tensor, targets: dict[str, torch.Tensor], weights: dict[str, float] | None = None
) -> tuple[float, torch.Tensor, dict[str, float]]:
    x = image.detach().clone().requires_grad_(True)
    total, terms = reference_loss(model, spec, x, targets, weights)
    (g,) = torch.autograd.grad(total, x)
    return float(total.detach()), g, {k: float(v.detach()) for k, v in terms.items()}
