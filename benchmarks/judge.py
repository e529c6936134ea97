"""An independent judge of a finished image: its fp32 loss on onnxruntime, and a sliced-Wasserstein
distance between its VGG features and the style image's, per style layer.

The loss is what every optimizer here minimizes, so it judges them on their own terms; but a run
that rounds in bf16, or stops early, could trade loss for something the eye sees. The
sliced-Wasserstein distance (SWD) does not look at the Gram matrices the loss matches: it compares
the whole distribution of the C-dimensional feature vectors at each style layer's relu output
(image vs style image), through ``--projections`` random 1-D projections, each compared as sorted
quantiles. Features come from the torch reference VGG19 (onnxstyle/reference/vgg.py) in fp32, with the
export's weights and pooling; the same seed gives the same projections for every image judged.

    python benchmarks/judge.py out.png --content tubingen.jpg --style starry_night.jpg [--size 512]

Prints (or --json writes) {"fp32_loss", "terms", "swd": {layer: value}, "swd_mean"}; lower is
better for both. ``swd_mean`` averages the layers after dividing each by the style's own spread
there (the RMS of its projected features), so that no layer dominates by its scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUANTILES = 256  # points at which two projected distributions are compared


def fp32_loss(models: Path, image: np.ndarray, content: np.ndarray, style: np.ndarray, threads: int | None = None) -> tuple[float, dict[str, float]]:
    """The loss of ``image`` (RGB HxWx3) on onnxruntime fp32, on targets made there too: the
    content resized to the image, the style at the image's longest side (the run's targets)."""
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.engine import no_temporal
    from onnxstyle.runtime.image_io import resize_to, to_nchw
    from onnxstyle.runtime.settings import EngineConfig, RunSettings

    st = Stylizer(models, EngineConfig(device="cpu", precision="fp32", threads=threads))
    h, w = image.shape[:2]
    c = resize_to(content, h, w)
    eng = st.engine
    t = st.targets(c, [style], RunSettings(size=max(h, w)), regions=1 if eng.guided else 0)
    if eng.guided:
        t["guide"] = np.ones((1, 1, h, w), np.float32)
    if eng.temporal:
        t.update(no_temporal(h, w))
    r = eng.loss_grad(to_nchw(image), t)
    return float(r.loss), {k: float(v) for k, v in r.terms.items()}


def reference_vgg(models: Path) -> tuple[Any, Any]:
    """The torch VGG19 with the export's weights and pooling, and the export's loss spec."""
    from onnxstyle.exportdir import read_manifest
    from onnxstyle.reference.vgg import VGG19
    from onnxstyle.reference.weights import load_caffe, load_weights

    manifest = read_manifest(models)
    source = manifest.data["weights"]["requested"]
    spec = manifest.spec
    model = VGG19(load_caffe() if source == "caffe" else load_weights(source), last=spec.deepest, pooling=spec.pooling).eval()
    return model, spec


def _features(model: Any, image: np.ndarray, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each layer's feature vectors as an (N positions, C) float32 array."""
    import torch

    from onnxstyle.runtime.image_io import to_nchw

    with torch.no_grad():
        out = model(torch.from_numpy(to_nchw(image)), layers)
    return {k: v[0].reshape(v.shape[1], -1).T.contiguous().numpy() for k, v in out.items()}


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int, seed: int = 0) -> tuple[float, float]:
    """(SWD, the spread of ``b``) between the rows of ``a`` and ``b`` (N×C and M×C): the RMS over
    random unit directions of the L2 distance between the two projected quantile functions."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(a.shape[1], projections)).astype(np.float32)
    d /= np.linalg.norm(d, axis=0, keepdims=True)
    q = (np.arange(QUANTILES) + 0.5) / QUANTILES
    pa = np.quantile(a @ d, q, axis=0)
    pb = np.quantile(b @ d, q, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2))), float(np.sqrt(np.mean(pb**2)))


def style_distance(model: Any, spec: Any, image: np.ndarray, style: np.ndarray, projections: int = 128) -> dict[str, Any]:
    """SWD per style layer between ``image`` and ``style`` (already at the run's style size)."""
    fi = _features(model, image, spec.style_layers)
    fs = _features(model, style, spec.style_layers)
    swd, rel = {}, []
    for i, layer in enumerate(spec.style_layers):
        dist, spread = sliced_wasserstein(fi[layer], fs[layer], projections, seed=i)
        swd[layer] = dist
        rel.append(dist / max(spread, 1e-12))
    return {"swd": swd, "swd_mean": float(np.mean(rel)), "projections": projections}


def judge(
    image: np.ndarray, content: np.ndarray, style: np.ndarray, models: Path, threads: int | None = None, projections: int = 128,
    style_scale: float = 1.0,
) -> dict[str, Any]:
    """Both verdicts on one finished image (RGB float32 HxWx3 in [0,1])."""
    import torch

    from onnxstyle.runtime.image_io import resize_longest

    if threads:
        torch.set_num_threads(threads)
    loss, terms = fp32_loss(models, image, content, style, threads)
    model, spec = reference_vgg(models)
    side = max(32, round(max(image.shape[:2]) * style_scale))
    out = style_distance(model, spec, image, resize_longest(style, side), projections)
    return {"fp32_loss": loss, "terms": terms, **out, "hw": list(image.shape[:2])}


def default_models() -> Path:
    from onnxstyle.autoexport import resolve_models
    from onnxstyle.exportdir import export_settings_for

    return resolve_models(export_settings_for("gatys"), log=lambda m: print(m, file=sys.stderr)).folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("--content", type=Path, required=True)
    ap.add_argument("--style", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=None, help="default: the gatys export (made if missing)")
    ap.add_argument("--projections", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the verdict here too")
    args = ap.parse_args()
    from onnxstyle.runtime.image_io import load_image

    image, content, style = (load_image(p)[0] for p in (args.image, args.content, args.style))
    verdict = judge(image, content, style, args.models or default_models(), args.threads, args.projections)
    text = json.dumps(verdict, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
