"""Start-up, spawn to the first gradient evaluation, phase by phase, against torch in one run.

Each sample is a fresh process (``python -c``) that stylizes a 4:3 photo at ``--size``
(default 256 px) as far as its first loss + gradient evaluation, timing each phase from the
moment the parent spawned it:

* onnxstyle (the default device, torch blocked from importing): interpreter, numpy, the
  runtime's imports, the engine (backend choice), then per graph: reading the ONNX graph,
  compiling it or loading it from the compiled cache, its first inference; the targets
  (content and style features) and the first evaluation;
* torch: imports, the model (Caffe weights), targets, first evaluation; in fp32 eager and,
  where the CPU has native bf16, under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Warm: the compiled cache holds this shape (one discarded process first), ``--runs`` processes
per side, the order rotating; medians. Cold: a new shape in an empty compiled cache.

    python benchmarks/startup.py --models DIR            # 256 px, 5 runs per side
    python benchmarks/startup.py --models DIR --runs 1   # a smoke run

Writes <out>/startup.json and <out>/startup.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MARK = "@@startup "

OURS = r'''
import time; T = {"interpreter": time.time()}
import json, sys
cfg = json.loads(sys.argv[1])
sys.modules["torch"] = None  # the runtime must not need torch
import numpy as np; T["numpy"] = time.time()
from onnxstyle.runtime.stylizer import Stylizer
from onnxstyle.runtime.settings import RunSettings
from onnxstyle.runtime import openvino_backend as ob
T["onnxstyle imports"] = time.time()
read, compile_, current = {}, {}, ["?"]
orig_read, orig_core = ob._read_onnx, ob._core
def timed_read(path):
    t = time.time(); m = orig_read(path); read[path.stem] = read.get(path.stem, 0) + time.time() - t
    current[0] = path.stem  # the graph the next compile is for
    return m
class Core:
    def __init__(self, core): self.core = core
    def compile_model(self, model, *a, **k):
        t = time.time(); c = self.core.compile_model(model, *a, **k)
        compile_[current[0]] = compile_.get(current[0], 0) + time.time() - t
        return c
    def __getattr__(self, n): return getattr(self.core, n)
ob._read_onnx = timed_read
ob._core = lambda: Core(orig_core())
h, w = cfg["hw"]
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
content = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(5 * yy) for c in range(3)], -1).astype(np.float32)
style = rng.random((w * 3 // 4, w, 3), dtype=np.float32)
st = Stylizer(cfg["models"]); T["engine"] = time.time()
targets = st.targets(content, [style], RunSettings(size=max(h, w)), regions=1); T["targets"] = time.time()
st.engine.release("features")
targets["guide"] = np.ones((1, 1, h, w), np.float32)
r = st.engine.loss_grad(np.ascontiguousarray(content.transpose(2, 0, 1)[None]), targets); T["first evaluation"] = time.time()
print("@@startup " + json.dumps({"t": T, "read": read, "compile": compile_, "provider": st.engine.provider}), flush=True)
'''

TORCH = r'''
import time; T = {"interpreter": time.time()}
import json, sys, contextlib
cfg = json.loads(sys.argv[1])
import numpy as np; T["numpy"] = time.time()
import torch
torch.set_num_threads(cfg["threads"])
from onnxstyle.reference.vgg import VGG19, reference_features, reference_loss_and_grad
from onnxstyle.reference.weights import load_caffe
from onnxstyle.spec import LossSpec
T["torch imports"] = time.time()
spec = LossSpec()
model = VGG19(load_caffe(), last=spec.deepest, pooling=spec.pooling).eval(); T["model"] = time.time()
cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cfg["autocast"] else contextlib.nullcontext
h, w = cfg["hw"]
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
content = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(5 * yy) for c in range(3)])[None].astype(np.float32)
style = rng.random((1, 3, w * 3 // 4, w), dtype=np.float32)
with torch.no_grad(), cast():
    ct = reference_features(model, spec, torch.from_numpy(content))
    sf = reference_features(model, spec, torch.from_numpy(style))
targets = {k: v.float() for k, v in ct.items() if k.startswith("content_")}
targets.update({k: v.float() for k, v in sf.items() if k.startswith("gram_")})
targets["guide"] = torch.ones((1, 1, h, w))
targets["temporal_target"] = torch.zeros((1, 3, h, w)); targets["temporal_map"] = torch.zeros((1, 1, h, w))
T["targets"] = time.time()
with cast():
    loss, g, _ = reference_loss_and_grad(model, spec, torch.from_numpy(content), targets)
T["first evaluation"] = time.time()
print("@@startup " + json.dumps({"t": T}), flush=True)
'''


def _spawn(script: str, cfg: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(MARK)]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"start-up worker failed ({r.returncode}): {r.stderr[-3000:]}")
    out = json.loads(lines[-1][len(MARK):])
    marks, last, phases = out["t"], t0, {}
    for name, t in marks.items():
        phases[name] = t - last
        last = t
    out["phases"] = phases
    out["total"] = last - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from onnxstyle.runtime.backends import available_backends
    from onnxstyle.runtime.providers import cpu_model, physical_cores

    threads = physical_cores()
    hw = [args.size * 3 // 4, args.size]
    cache = Path(tempfile.mkdtemp(prefix="startup-cache-"))
    env = dict(os.environ, ONNXSTYLE_CACHE=str(cache), OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    sides: dict[str, tuple[str, dict[str, Any]]] = {
        "onnxstyle": (OURS, {"models": str(args.models), "hw": hw}),
        "torch fp32": (TORCH, {"hw": hw, "threads": threads, "autocast": False}),
    }
    if available_backends().bf16_native:
        sides["torch bf16"] = (TORCH, {"hw": hw, "threads": threads, "autocast": True})
    res: dict[str, Any] = {"machine": f"{cpu_model()}, {threads} cores", "loadavg_start": os.getloadavg()[0], "hw": hw}
    # Cold: a shape this cache has never seen (the first process of all), then warm runs.
    res["cold"] = _spawn(OURS, {"models": str(args.models), "hw": hw}, env)
    for script, cfg in sides.values():
        _spawn(script, cfg, env)  # file cache, .pyc
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in sides}
    names = list(sides)
    for i in range(args.runs):
        for n in names[i % len(names):] + names[: i % len(names)]:
            runs[n].append(_spawn(*sides[n], env))
    res["warm"] = {
        n: {
            "total_s": statistics.median(r["total"] for r in rs),
            "phases_s": {k: statistics.median(r["phases"][k] for r in rs) for k in rs[0]["phases"]},
            **({"read_s": {k: statistics.median(r["read"].get(k, 0) for r in rs) for k in rs[0]["read"]},
                "compile_or_load_s": {k: statistics.median(r["compile"].get(k, 0) for r in rs) for k in rs[0]["compile"]}}
               if n == "onnxstyle" else {}),
        }
        for n, rs in runs.items()
    }
    res["provider"] = runs["onnxstyle"][0]["provider"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "startup.md").write_text(report(res))
    print(report(res))


def report(r: dict[str, Any]) -> str:
    w = r["warm"]
    ours = w["onnxstyle"]["total_s"]
    best_torch = min(v["total_s"] for k, v in w.items() if k.startswith("torch"))
    lines = [
        "# Start-up: spawn to the first loss + gradient evaluation (`benchmarks/startup.py`)", "",
        f"{r['machine']}; load average {r['loadavg_start']:.2f} at start; {r['hw'][1]}x{r['hw'][0]} px; onnxstyle on "
        f"{r['provider']}; medians of fresh processes, warm compiled cache.", "",
        "| side | spawn → first evaluation | × fastest torch |", "| --- | --- | --- |",
    ]
    for n, v in w.items():
        lines.append(f"| {n} | {v['total_s']:.2f} s | {best_torch / v['total_s']:.2f} |")
    lines.append(f"| onnxstyle, cold (new shape, empty cache) | {r['cold']['total']:.2f} s | {best_torch / r['cold']['total']:.2f} |")
    lines += ["", f"onnxstyle warm is ×{best_torch / ours:.2f} faster than torch's fastest start here.", "",
              "Phases (s, medians; each from the end of the one before):", "",
              "| side | " + " | ".join(w["onnxstyle"]["phases_s"]) + " |", "|" + " --- |" * (len(w["onnxstyle"]["phases_s"]) + 1)]
    lines.append("| onnxstyle | " + " | ".join(f"{v:.3f}" for v in w["onnxstyle"]["phases_s"].values()) + " |")
    for n, v in w.items():
        if n.startswith("torch"):
            lines.append(f"| {n} | " + " | ".join(f"{p:.3f}" for p in v["phases_s"].values()) + " |")
    o = w["onnxstyle"]
    lines += ["", "Inside onnxstyle's targets and first evaluation (s): "
              + ", ".join(f"reading {k}.onnx {v:.3f}" for k, v in o["read_s"].items()) + "; "
              + ", ".join(f"compile/load {k} {v:.3f}" for k, v in o["compile_or_load_s"].items()) + "; cold: "
              + ", ".join(f"compile {k} {v:.3f}" for k, v in r["cold"]["compile"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
