"""Which optimizer drives loss_grad best: loss reached after N gradient evaluations.

Same problem for every contender: the default (gatys) export, Tübingen × The Starry Night
at --size px, content init, the loss and gradient from loss_grad.onnx. torch.optim.LBFGS
(history 100, lr 1, no line search: the setting of the PyTorch tutorial and neural-style)
gets the very same objective through a closure, so only the optimizer differs.

    python benchmarks/optimizer.py --size 256 --evals 300

Writes benchmarks/results/optimizer.{json,md}.
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
from onnxstyle.runtime.stylizer import Stylizer  # noqa: E402
from onnxstyle.runtime.settings import EngineConfig, RunSettings  # noqa: E402
from onnxstyle.exportdir import export_settings_for# noqa: E402
from onnxstyle.runtime.image_io import load_image, resize_longest, to_nchw  # noqa: E402
from onnxstyle.runtime.optimize import adam, lbfgs, lbfgs32  # noqa: E402
from onnxstyle.runtime.providers import cpu_model  # noqa: E402

CHECKPOINTS = (25, 50, 100, 200, 300, 500)


def torch_lbfgs(objective, x0: np.ndarray, evals: int, history: int, line_search: str | None, clamp: bool):  # type: ignore[no-untyped-def]
    import torch

    x = torch.from_numpy(x0.copy()).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, history_size=history, max_iter=evals, max_eval=evals,
                            tolerance_grad=-1, tolerance_change=-1, line_search_fn=line_search)
    losses: list[float] = []

    def closure():  # type: ignore[no-untyped-def]
        if clamp:
            with torch.no_grad():
                x.clamp_(0, 1)
        loss, grad, _ = objective(x.detach().numpy())
        losses.append(loss)
        x.grad = torch.from_numpy(np.ascontiguousarray(grad, np.float32))
        return torch.tensor(loss)

    while len(losses) < evals:
        before = len(losses)
        opt.step(closure)
        if len(losses) == before:
            break
    return losses[:evals]


def best_so_far(losses: list[float]) -> list[float]:
    return list(np.minimum.accumulate(np.asarray(losses, np.float64)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--evals", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--device", default="cpu", help="the engine for every row (cpu: onnxruntime fp32)")
    ap.add_argument("--only", default=None, help="run only the rows whose name contains one of these comma-separated words (torch's reference row always runs)")
    args = ap.parse_args()
    wanted = [w.strip() for w in args.only.split(",")] if args.only else None

    data = ROOT / "onnxstyle" / "data"
    content, _ = load_image(data / "tubingen.jpg")
    style, _ = load_image(data / "starry_night.jpg")
    s = RunSettings(size=args.size)
    st = Stylizer(resolve_models(export_settings_for("gatys")).folder, EngineConfig(device=args.device))
    content = resize_longest(content, s.size)
    targets = st.targets(content, [style], s, regions=1)
    targets["guide"] = np.ones((1, 1, *content.shape[:2]), np.float32)
    x0 = to_nchw(content)

    def objective(x: np.ndarray):  # type: ignore[no-untyped-def]
        r = st.engine.loss_grad(x, targets)
        return r.loss, r.grad, r.terms

    runs: dict[str, dict] = {}

    def record(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        if wanted and "no line search" not in name and not any(w in name for w in wanted):
            return
        t0 = time.perf_counter()
        losses = fn()
        wall = time.perf_counter() - t0
        runs[name] = {"losses": losses, "wall_s": wall}
        print(f"{name:38s} {len(losses)} evals, best {min(losses):.4g}, {wall:.1f}s", flush=True)

    for h in (5, 20):
        record(f"scipy L-BFGS-B, history {h} (float64)", lambda h=h: lbfgs(objective, x0, args.evals, history=h).history)
    for h in (3, 5, 10, 20):
        record(f"projected L-BFGS, history {h} (float32)", lambda h=h: lbfgs32(objective, x0, args.evals, history=h).history)
    record("torch LBFGS, history 100, no line search (clamp)", lambda: torch_lbfgs(objective, x0, args.evals, 100, None, True))
    record("torch LBFGS, history 100, strong Wolfe", lambda: torch_lbfgs(objective, x0, args.evals, 100, "strong_wolfe", False))
    record("Adam lr 0.02", lambda: adam(objective, x0, args.evals, lr=0.02).history)

    checkpoints = [c for c in CHECKPOINTS if c <= args.evals]
    table = {name: {c: best_so_far(r["losses"])[min(c, len(r["losses"])) - 1] for c in checkpoints} for name, r in runs.items()}
    ref = table["torch LBFGS, history 100, no line search (clamp)"]
    lines = [
        f"# Optimizer comparison: best loss after N gradient evaluations ({args.size} px, content init)",
        "",
        f"Machine: {cpu_model()}, {st.engine.threads} threads, "
        f"provider {st.engine.provider}. Same objective (loss_grad.onnx) for every row; lower is better; "
        "in brackets: ratio to torch.optim.LBFGS (tutorial settings).",
        "",
        "| optimizer | " + " | ".join(f"{c} evals" for c in checkpoints) + " |",
        "| --- | " + " | ".join("---" for _ in checkpoints) + " |",
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4g} ({row[c] / ref[c]:.2f})" for c in checkpoints) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimizer.json").write_text(json.dumps({"size": args.size, "evals": args.evals, "runs": runs, "table": table}, indent=1))
    (args.out / "optimizer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
