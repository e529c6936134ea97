"""GPU check: the exported graphs on CUDA and TensorRT (fp32, fp16) against onnxruntime's CPU.

Prepared to run in at most 8 minutes on a machine with one NVIDIA GPU and onnxruntime-gpu
(see benchmarks/README.md for getting the wheel there). For each GPU path it:

1. validates both graphs against the CPU provider at two odd sizes: every features output
   and the loss, its terms and the gradient (max error relative to the CPU's max, and the
   gradient's cosine), with the same thresholds as the export validation for fp32 and
   looser, stated ones for fp16;
2. times one loss + gradient evaluation at 512 and 1024 px (median of 5 after warm-up,
   TensorRT's engine build reported separately);
3. times torch's own paths on the same GPU, the honest peer: eager fp32 autograd of the
   identical loss (onnxstyle/reference/vgg.py), and the same under fp16 and bf16 autocast
   (``torch.autocast("cuda", dtype=...)``), where torch with CUDA is installed;
4. writes benchmarks/results/gpu.{json,md}.

A provider that is missing (TensorRT's libraries are not on every image) is reported as
skipped with the reason, not as a failure.

    python benchmarks/gpu_check.py --models MODELS_DIR [--out benchmarks/results] [--budget 450]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxstyle.runtime.engine import Engine  # noqa: E402
from onnxstyle.runtime.settings import EngineConfig  # noqa: E402

CHECK_SIZES = ((37, 45), (64, 51))
TIME_SIZES = ((384, 512), (768, 1024))
# fp32: the export validation's thresholds. fp16: TensorRT's half precision rounds each conv
# to 11 bits of mantissa; a gradient within 5% of the max and a cosine of 0.99 is what a
# correct fp16 graph gives, a wrong one is far off both.
LIMITS = {"fp32": (1e-3, 0.9999), "fp16": (5e-2, 0.99)}
PATHS = (("cuda", "fp32"), ("tensorrt", "fp32"), ("tensorrt", "fp16"))


def image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / 7 + c) * np.cos(yy / 5 - c) for c in range(3)])
    return (0.05 + 0.9 * np.clip(0.5 + 0.3 * base + 0.1 * rng.standard_normal((3, h, w)), 0, 1))[None].astype(np.float32)


def evaluate(engine: Engine, h: int, w: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    content, style = image(rng, h, w), image(rng, w, h)
    x = np.clip(content + 0.05 * rng.standard_normal(content.shape).astype(np.float32), 0.02, 0.98)
    ct, st = engine.features(content), engine.features(style)
    wanted = {i["name"] for i in engine.manifest.inputs("loss_grad")}
    targets = {k: v for k, v in ct.items() if k.startswith("content_") and k in wanted}
    targets.update({k: v for k, v in st.items() if k.startswith("gram_") and k in wanted})
    if engine.guided:
        targets["guide"] = np.ones((1, 1, h, w), np.float32)
    r = engine.loss_grad(x, targets)
    outs = {f"features:{k}": v for k, v in ct.items()}
    outs.update({"loss": np.float64(r.loss), "grad": r.grad, **{k: np.float64(v) for k, v in r.terms.items()}})
    return outs, {"x": x, "targets": targets}


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], precision: str) -> dict[str, Any]:
    tol, cos_min = LIMITS[precision]
    rows, ok = {}, True
    for k, r in ref.items():
        g = np.asarray(got[k], np.float64)
        r = np.asarray(r, np.float64)
        scale = float(np.abs(r).max()) or 1.0
        err = float(np.abs(g - r).max() / scale)
        row = {"max_err": err}
        if k == "grad":
            row["cosine"] = float((g * r).sum() / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-30))
            ok &= row["cosine"] >= cos_min
        ok &= err <= tol
        rows[k] = row
    return {"ok": bool(ok), "outputs": rows}


def time_one(engine: Engine, h: int, w: int, repeats: int = 5) -> dict[str, float]:
    t0 = time.perf_counter()
    _, feeds = evaluate(engine, h, w, 0)
    build = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.loss_grad(feeds["x"], feeds["targets"])
        times.append(time.perf_counter() - t)
    return {"first_s": build, "median_s": float(np.median(times))}


def run_path(models: Path, device: str, precision: str, cpu_refs: dict[Any, dict[str, np.ndarray]], deadline: float) -> dict[str, Any]:
    try:
        engine = Engine(models, EngineConfig(device=device, precision=precision))
    except Exception as e:  # missing provider or libraries: reported, not fatal
        return {"status": "skipped", "reason": str(e).splitlines()[0]}
    out: dict[str, Any] = {"status": "ran", "provider": engine.provider, "checks": {}, "timings": {}}
    try:
        for (h, w) in CHECK_SIZES:
            got, _ = evaluate(engine, h, w, 1)
            out["checks"][f"{h}x{w}"] = compare(got, cpu_refs[(h, w)], precision)
        for (h, w) in TIME_SIZES:
            if time.monotonic() > deadline:
                out["timings"][f"{h}x{w}"] = {"skipped": "time budget spent"}
                continue
            out["timings"][f"{h}x{w}"] = time_one(engine, h, w)
    except Exception as e:  # a provider that loads but fails to run is a finding
        out["status"] = "failed"
        out["reason"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return out


TORCH_PATHS = (("fp32", None), ("fp16 autocast", "float16"), ("bf16 autocast", "bfloat16"))


def torch_cuda(models: Path, deadline: float, repeats: int = 5) -> dict[str, Any]:
    """torch's loss + gradient on the GPU at the timing sizes, per path: what a torch user gets there."""
    try:
        import torch
    except ImportError:
        return {"status": "skipped", "reason": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "torch has no CUDA device here"}
    from onnxstyle.exportdir import read_manifest
    from onnxstyle.reference.vgg import VGG19, reference_loss
    from onnxstyle.reference.weights import load_caffe, load_weights

    manifest = read_manifest(models)
    spec, source = manifest.spec, manifest.data["weights"]["requested"]
    model = VGG19(load_caffe() if source == "caffe" else load_weights(source), last=spec.deepest, pooling=spec.pooling).eval().cuda()
    cpu = Engine(models, EngineConfig(device="cpu"))
    out: dict[str, Any] = {"status": "ran", "device": torch.cuda.get_device_name(0), "timings": {}}
    for (h, w) in TIME_SIZES:
        _, feeds = evaluate(cpu, h, w, 0)
        x = torch.from_numpy(feeds["x"]).cuda()
        targets = {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in feeds["targets"].items()}
        for name, dtype in TORCH_PATHS:
            if time.monotonic() > deadline:
                out["timings"][f"{name} {h}x{w}"] = {"skipped": "time budget spent"}
                continue

            def once() -> None:
                xi = x.detach().clone().requires_grad_(True)
                with torch.autocast("cuda", dtype=getattr(torch, dtype), enabled=dtype is not None):
                    loss, _ = reference_loss(model, spec, xi, targets)
                loss.float().backward()
                torch.cuda.synchronize()

            once()  # cuDNN's algorithm search and the allocator's first blocks
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                once()
                times.append(time.perf_counter() - t)
            out["timings"][f"{name} {h}x{w}"] = {"median_s": float(np.median(times))}
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# GPU check", "",
        f"{res['machine']}; onnxruntime {res['onnxruntime']} ({', '.join(res['providers'])}).", "",
        "| path | status | validation (worst output error, gradient cosine) | 512x384 | 1024x768 | CPU 512x384 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in res["paths"].items():
        if r["status"] == "skipped":
            lines.append(f"| {name} | skipped: {r['reason']} | | | | |")
            continue
        val = []
        for size, c in r["checks"].items():
            worst = max(v["max_err"] for v in c["outputs"].values())
            val.append(f"{size}: {'ok' if c['ok'] else 'FAIL'} {worst:.1e}, cos {c['outputs']['grad']['cosine']:.5f}")
        t = [r["timings"].get(f"{h}x{w}", {}) for h, w in TIME_SIZES]
        cells = [f"{x['median_s'] * 1000:.0f} ms" if "median_s" in x else "—" for x in t]
        lines.append(f"| {name} | {r['status']} {r.get('reason', '')} | {'; '.join(val)} | {cells[0]} | {cells[1]} | {res['cpu_512_ms']:.0f} ms |")
    t = res.get("torch", {})
    if t.get("status") != "ran":
        lines += ["", f"torch on the GPU: skipped ({t.get('reason', 'not run')})."]
    else:
        lines += ["", f"torch on the GPU ({t['device']}), the same loss + gradient:", "", "| torch path | 512x384 | 1024x768 |", "| --- | --- | --- |"]
        for name, _ in TORCH_PATHS:
            cells = [t["timings"].get(f"{name} {h}x{w}", {}) for h, w in TIME_SIZES]
            lines.append(f"| {name} | " + " | ".join(f"{c['median_s'] * 1000:.0f} ms" if "median_s" in c else "—" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="an export folder (onnxstyle export --out DIR)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds; timings stop when spent")
    args = ap.parse_args()
    deadline = time.monotonic() + args.budget
    import onnxruntime as ort

    cpu = Engine(args.models, EngineConfig(device="cpu"))
    refs = {(h, w): evaluate(cpu, h, w, 1)[0] for h, w in CHECK_SIZES}
    cpu_512 = time_one(cpu, 384, 512, repeats=2)["median_s"] * 1000
    res: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cpu_512_ms": cpu_512,
        "paths": {f"{d} {p}": run_path(args.models, d, p, refs, deadline) for d, p in PATHS},
    }
    res["torch"] = torch_cuda(args.models, deadline)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out / "gpu.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
