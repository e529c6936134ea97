"""Time to quality: wall time until the loss at 512 px beats the torch reference's.

The reference is what a torch user runs: eager VGG19 + autograd of the identical loss,
torch.optim.LBFGS (history 100, lr 1, no line search, as in the PyTorch tutorial), content
init, 300 evaluations at --size. Its final loss is the bar. onnxstyle then runs each
strategy and we record the wall time (same process, same threads) until the loss,
evaluated at --size, first falls below the bar; coarse-to-fine stages count in full.

    python benchmarks/time_to_quality.py            # 512 px, 300 reference evaluations

Writes benchmarks/results/time_to_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxstyle.autoexport import resolve_models  # noqa: E402
from onnxstyle.runtime.api import Stylizer  # noqa: E402
from onnxstyle.runtime.settings import EngineConfig, RunSettings  # noqa: E402
from onnxstyle.spec import export_settings_for  # noqa: E402
from onnxstyle.runtime.image_io import load_image, resize_longest, to_nchw  # noqa: E402
from onnxstyle.runtime.optimize import Iterate  # noqa: E402
from onnxstyle.runtime.providers import cpu_model  # noqa: E402


class Reached(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--ref-evals", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--full", action="store_true", help="also run single-scale L-BFGS-B (slow: ~300 evaluations at full size)")
    args = ap.parse_args()

    import torch

    from onnxstyle.models.vgg import VGG19, reference_loss_and_grad
    from onnxstyle.models.weights import load_caffe
    from onnxstyle.runtime.providers import physical_cores
    from onnxstyle.spec import LossSpec

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    data = ROOT / "onnxstyle" / "data"
    content_full, _ = load_image(data / "tubingen.jpg")
    style, _ = load_image(data / "starry_night.jpg")
    content = resize_longest(content_full, args.size)
    settings = RunSettings(size=args.size)
    st = Stylizer(resolve_models(export_settings_for("gatys")).folder, EngineConfig(device="cpu", threads=threads))
    targets = st.targets(content, [style], settings, regions=1)
    targets["guide"] = np.ones((1, 1, *content.shape[:2]), np.float32)
    x0 = to_nchw(content)

    # The bar: torch eager + torch.optim.LBFGS, history 100.
    spec = LossSpec()
    model = VGG19(load_caffe(), last=spec.deepest, pooling=spec.pooling).eval()
    tt = {k: torch.from_numpy(v) for k, v in targets.items()}
    x = torch.from_numpy(x0.copy()).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, history_size=100, max_iter=20)
    ref_losses: list[float] = []
    t0 = time.perf_counter()

    def closure():  # type: ignore[no-untyped-def]
        with torch.no_grad():
            x.clamp_(0, 1)
        loss, g, _ = reference_loss_and_grad(model, spec, x.detach(), tt)
        ref_losses.append(loss)
        x.grad = g
        return torch.tensor(loss)

    while len(ref_losses) < args.ref_evals:
        opt.step(closure)
    ref_wall = time.perf_counter() - t0
    bar = min(ref_losses[: args.ref_evals])
    print(f"torch reference: {args.ref_evals} evaluations in {ref_wall:.1f}s, best loss {bar:.5g}", flush=True)

    strategies = {
        "coarse-to-fine half → full": settings.replace(
            scales=(args.size // 2, args.size), scale_iterations=(150, 2 * args.ref_evals)
        ),
        "coarse-to-fine quarter → half → full": settings.replace(
            scales=(args.size // 4, args.size // 2, args.size), scale_iterations=(150, 100, 2 * args.ref_evals)
        ),
    }
    if args.full:
        strategies["L-BFGS-B at full size"] = settings.replace(iterations=2 * args.ref_evals)
    rows = {}
    for name, s in strategies.items():
        final_w = round(args.size * content.shape[1] / max(content.shape[:2]))
        start = time.perf_counter()
        hit: dict[str, float] = {}

        def cb(it: Iterate, hit: dict[str, float] = hit, start: float = start, final_w: int = final_w) -> None:
            if it.image.shape[3] == final_w and it.loss <= bar:
                hit["wall"] = time.perf_counter() - start
                hit["step"] = it.step
                raise Reached

        try:
            r = st.run(content, [style], s, cb)
            # L-BFGS-B catches nothing but its own signals: a Reached inside it surfaces here.
            rows[name] = {"reached": False, "wall_s": time.perf_counter() - start, "best": r.loss}
        except Reached:
            rows[name] = {"reached": True, "wall_s": hit["wall"], "evaluations": hit["step"]}
        print(name, rows[name], flush=True)

    lines = [
        f"# Time to quality at {args.size} px (Tübingen × The Starry Night, gatys loss, content init)",
        "",
        f"Machine: {cpu_model()}, {threads} threads, onnxruntime CPU provider, torch {torch.__version__}.",
        f"Bar: the best loss torch.optim.LBFGS (history 100, lr 1, no line search) reaches in {args.ref_evals} "
        f"evaluations of torch eager autograd: **{bar:.5g}**, after **{ref_wall:.0f} s**.",
        "",
        "| strategy | reached the bar | wall time | speed-up vs torch (target ≥ 3×) |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        if row["reached"]:
            lines.append(f"| {name} | yes, evaluation {row['evaluations']} | {row['wall_s']:.0f} s | {ref_wall / row['wall_s']:.2f}× |")
        else:
            lines.append(f"| {name} | no (best {row['best']:.5g}) | {row['wall_s']:.0f} s | — |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "time_to_quality.json").write_text(
        json.dumps({"size": args.size, "ref_evals": args.ref_evals, "bar": bar, "ref_wall_s": ref_wall, "rows": rows,
                    "ref_losses": ref_losses}, indent=1)
    )
    (args.out / "time_to_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
