"""onnxruntime's memory options for the loss graph, side by side: why the runtime turns the
memory pattern off and keeps the arena.

    python benchmarks/ort_options.py            # 512 and 1024 px, about 6 minutes on 2 cores

For each configuration a fresh process builds the session the way the runtime does
(ORT_ENABLE_ALL, one thread per physical core) with the option changed, runs one warm-up and
three timed evaluations, and reports its peak resident set (VmHWM) and the median time. Rounds
alternate the configurations so that a change in load hits them alike.
Writes <out>/ort_options.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "runtime default (arena on, pattern off)": {"arena": True, "pattern": False},
    "arena on, pattern on (onnxruntime's default)": {"arena": True, "pattern": True},
    "arena off, pattern off": {"arena": False, "pattern": False},
}

WORKER = r'''
import json, sys, time
cfg = json.loads(sys.argv[1])
sys.modules["torch"] = None
import numpy as np, onnxruntime as ort
from onnxstyle.runtime.engine import Engine
from onnxstyle.runtime.settings import EngineConfig
h, w = cfg["h"], cfg["w"]
e = Engine(cfg["models"], EngineConfig(device="cpu"))
rng = np.random.default_rng(0)
x = rng.uniform(0.1, 0.9, (1, 3, h, w)).astype(np.float32)
t = {k: v for k, v in e.features(x).items() if k.startswith(("content_", "gram_"))}
t["guide"] = np.ones((1, 1, h, w), np.float32)
e.release("features")
so = ort.SessionOptions()
so.log_severity_level = 3
so.intra_op_num_threads = e.threads
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
so.enable_cpu_mem_arena = cfg["arena"]
so.enable_mem_pattern = cfg["pattern"]
sess = ort.InferenceSession(f"{cfg['models']}/loss_grad.onnx", so, providers=["CPUExecutionProvider"])
feeds = {"image": x, **t, "temporal_target": np.zeros((1, 3, h, w), np.float32), "temporal_map": np.zeros((1, 1, h, w), np.float32)}
times = []
for i in range(4):
    t0 = time.perf_counter()
    out = sess.run(["loss", "grad"], feeds)
    times.append(time.perf_counter() - t0)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("@@ " + json.dumps({"peak": int(hwm) * 1024, "times": times[1:]}))
'''


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], capture_output=True, text=True, cwd=ROOT)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("@@ ")]
    if not line:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(line[-1][3:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from onnxstyle.autoexport import resolve_models
    from onnxstyle.exportdir import export_settings_for

    models = args.models or resolve_models(export_settings_for("gatys")).folder
    rows: dict[str, dict[str, Any]] = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        h, w = size * 3 // 4, size
        for r in range(args.rounds):
            names = list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]
            for name in names:
                res = run({"models": str(models), "h": h, "w": w, **CONFIGS[name]})
                row = rows.setdefault(f"{size}|{name}", {"size": size, "config": name, "peaks": [], "times": []})
                row["peaks"].append(res["peak"])
                row["times"] += res["times"]
                print(f"{w}x{h} {name}: {res['peak'] / 2**20:.0f} MiB, {statistics.median(res['times']):.2f} s", flush=True)
    lines = ["# onnxruntime memory options for loss_grad (one evaluation, whole process)", "",
             "| size | configuration | peak RSS | s per evaluation | × runtime default |", "| --- | --- | --- | --- | --- |"]
    for size in sorted({r["size"] for r in rows.values()}):
        base = statistics.median(rows[f"{size}|{next(iter(CONFIGS))}"]["times"])
        for name in CONFIGS:
            r = rows[f"{size}|{name}"]
            t = statistics.median(r["times"])
            lines.append(f"| {size}x{size * 3 // 4} | {name} | {max(r['peaks']) / 2**20:.0f} MiB | {t:.2f} | {t / base:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ort_options.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "ort_options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
