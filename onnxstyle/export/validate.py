"""Run the exported graphs in onnxruntime and compare them with torch autograd.

Names first, then shapes, then values, at sizes other than anything the export
saw (there is no export sample at all: the graphs are built symbolically, so any
size tested is "other"). Odd sizes are included on purpose: floor-mode pooling
drops a row or column there, and the adjoint must put a zero gradient back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from ..models.vgg import VGG19, reference_features, reference_loss_and_grad
from ..spec import LossSpec

# Sizes (H, W) checked after every export: odd, non-square, not multiples of 32.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((37, 45), (64, 51))
GRAD_REL_TOL = 1e-3
COSINE_MIN = 0.9999


@dataclass
class SizeReport:
    size: tuple[int, int]
    feature_max_rel: float
    loss_rel: float
    grad_max_rel: float
    grad_cosine: float

    def ok(self) -> bool:
        return self.grad_max_rel <= GRAD_REL_TOL and self.grad_cosine >= COSINE_MIN and self.loss_rel <= 1e-3

    def line(self) -> str:
        return (
            f"{self.size[0]}x{self.size[1]}: features max rel err {self.feature_max_rel:.1e}, "
            f"loss rel err {self.loss_rel:.1e}, grad max-abs err / max {self.grad_max_rel:.1e}, "
            f"cosine {self.grad_cosine:.7f}"
        )


def _session(path: Path):  # type: ignore[no-untyped-def]
    try:
        import onnxruntime as ort
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("validation needs onnxruntime: pip install 'onnxstyle[cpu]'") from e
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like test image: smooth colour gradients plus texture, in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / 7 + c) * np.cos(yy / 5 - c) for c in range(3)])
    img = 0.5 + 0.3 * base + 0.15 * rng.standard_normal((3, h, w)).astype(np.float32)
    # Off 0 and 1: clipped flat patches tie in max-pooling, where torch and onnxruntime
    # may validly route the gradient to different (equal) inputs.
    return (0.05 + 0.9 * np.clip(img, 0, 1))[None].astype(np.float32)


def validate_export(
    folder: Path,
    model: VGG19,
    spec: LossSpec,
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES,
    seed: int = 0,
) -> list[SizeReport]:
    feats = _session(folder / "features.onnx")
    lossg = _session(folder / "loss_grad.onnx")
    want_out = [f"content_{n}" for n in spec.content_layers] + [f"gram_{n}" for n in spec.style_layers]
    got_out = [o.name for o in feats.get_outputs()]
    if got_out != want_out:
        raise ExportError(f"features.onnx outputs {got_out}, expected {want_out}")
    lg_inputs = {i.name for i in lossg.get_inputs()}
    if not set(want_out) <= lg_inputs:
        raise ExportError(f"loss_grad.onnx lacks target inputs {sorted(set(want_out) - lg_inputs)}")

    rng = np.random.default_rng(seed)
    reports = []
    for h, w in sizes:
        content = _smooth_image(rng, h, w)
        style = _smooth_image(rng, w, h)  # a different size on purpose: Grams don't depend on it
        image = np.clip(content + 0.05 * rng.standard_normal(content.shape).astype(np.float32), 0.02, 0.98)

        ct = dict(zip(got_out, feats.run(None, {"image": content})))
        st = dict(zip(got_out, feats.run(None, {"image": style})))
        targets = {k: ct[k] for k in want_out if k.startswith("content_")}
        targets.update({k: st[k] for k in want_out if k.startswith("gram_")})
        extra: dict[str, np.ndarray] = {}
        if spec.guided:
            # Two soft, overlapping regions, each against its own target (the second from the content).
            ramp = np.linspace(0, 1, w, dtype=np.float32)[None, None, None, :].repeat(h, 2)
            extra["guide"] = np.concatenate([ramp, 1 - ramp ** 2], axis=0).astype(np.float32)
        with torch.no_grad():
            ref_c = reference_features(model, spec, torch.from_numpy(content))
            ref_s = reference_features(model, spec, torch.from_numpy(style))
        feat_err = 0.0
        for k in want_out:
            ref = (ref_c if k.startswith("content_") else ref_s)[k].numpy()
            got = targets[k]
            if got.shape != ref.shape:
                raise ExportError(f"{h}x{w}: {k} has shape {got.shape}, torch gives {ref.shape}")
            feat_err = max(feat_err, float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-12)))

        feeds = dict(targets)
        if spec.guided:
            feeds.update({k: np.stack([st[k], ct[k]]) for k in want_out if k.startswith("gram_")})
            feeds.update(extra)
        out_names = [o.name for o in lossg.get_outputs()]
        outs = dict(zip(out_names, lossg.run(None, {"image": image, **feeds})))
        ref_loss, ref_grad, _ = reference_loss_and_grad(
            model, spec, torch.from_numpy(image), {k: torch.from_numpy(v) for k, v in feeds.items()}
        )
        g, rg = outs["grad"].astype(np.float64), ref_grad.numpy().astype(np.float64)
        if g.shape != rg.shape:
            raise ExportError(f"{h}x{w}: grad has shape {g.shape}, torch gives {rg.shape}")
        reports.append(
            SizeReport(
                size=(h, w),
                feature_max_rel=feat_err,
                loss_rel=abs(float(outs["loss"]) - ref_loss) / (abs(ref_loss) + 1e-12),
                grad_max_rel=float(np.abs(g - rg).max() / (np.abs(rg).max() + 1e-30)),
                grad_cosine=float((g * rg).sum() / (np.linalg.norm(g) * np.linalg.norm(rg) + 1e-30)),
            )
        )
    return reports
