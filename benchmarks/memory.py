"""Peak memory of `onnxstyle stylize` against a torch implementation of the same method, in one run.

For each size (longest side; a 4:3 photo) three fresh processes are measured:

* **cli**: the real command, `onnxstyle stylize CONTENT STYLE --size S --scales S --iterations N`
  (single scale), run in-process by a two-line wrapper that reads the process's VmHWM
  (peak resident set) from /proc/self/status at exit;
* **phases**: the same pipeline with a VmRSS/VmHWM reading after each phase, to break the
  peak into its parts: interpreter and libraries, session weights, the features pass, the
  loss_grad pass, optimizer state (with the image buffers it copies), what the CLI adds;
* **torch**: the reference, eager VGG19 + autograd of the identical loss (same Caffe
  weights, layers, images), `torch.optim.LBFGS(history_size=20, line_search_fn="strong_wolfe")`
  with the image clamped to [0, 1], the same number of evaluations.

The dry-run estimate (`onnxstyle stylize --dry-run`, `runtime.memory.estimate_run_bytes`)
is recorded beside each measured peak, so the table shows whether it brackets it.

    python benchmarks/memory.py                       # 256, 512, 1024, 1536 px, 10 evaluations
    python benchmarks/memory.py --sizes 256 --evals 3 --out /tmp/m   # a smoke run

Writes <out>/memory.json and <out>/memory.md. Devices: --devices auto,cpu (auto is the default
backend of this machine; cpu is onnxruntime's CPU provider in fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MARK = "@@mem "

# Whole-process peak of the real command. The CLI exits through sys.exit: read VmHWM in finally.
CLI = r'''
import json, sys
args = json.loads(sys.argv[1])
sys.argv = ["onnxstyle", *args]
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
code = 0
try:
    from onnxstyle.cli import main
    main()
except SystemExit as e:
    code = e.code or 0
finally:
    print("@@mem " + json.dumps({"peak": hwm(), "code": code}), flush=True)
'''

# The CLI's pipeline, phase by phase, with the resident set after each.
PHASES = r'''
import json, sys, time
cfg = json.loads(sys.argv[1])
sys.modules["torch"] = None  # the runtime must not need torch
def mem():
    d = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM:", "VmRSS:")):
            d[line.split(":")[0]] = int(line.split()[1]) * 1024
    return d
marks = [("start", mem())]
import numpy as np
from onnxstyle.runtime.stylizer import Stylizer
from onnxstyle.runtime.settings import EngineConfig, RunSettings
from onnxstyle.runtime.image_io import load_image
from onnxstyle.exportdir import FEATURES, LOSS_GRAD
marks.append(("libraries", mem()))
s = RunSettings(size=cfg["size"], iterations=cfg["evals"], scales=(cfg["size"],), optimizer=cfg["optimizer"])
st = Stylizer(cfg["models"], EngineConfig(device=cfg["device"]))
content = load_image(cfg["content"], cfg["size"])[0]
style = load_image(cfg["style"], cfg["size"])[0]
h, w = content.shape[:2]
st.engine._runner(FEATURES, h, w, 1, exact=True); st.engine._runner(LOSS_GRAD, h, w, 1)
marks.append(("sessions", mem()))
targets = st.targets(content, [style], s, regions=1 if st.engine.guided else 0)
marks.append(("features pass", mem()))
st.engine.release(FEATURES)
marks.append(("features released", mem()))
from onnxstyle.runtime.image_io import to_nchw
targets["guide"] = np.ones((1, 1, h, w), np.float32)
st.engine.loss_grad(to_nchw(content), targets)
marks.append(("loss_grad pass", mem()))
st.run(content, [style], s)
marks.append(("optimizer", mem()))
print("@@mem " + json.dumps({"marks": marks, "hw": [h, w], "provider": st.engine.provider}), flush=True)
'''

TORCH = r'''
import json, sys
cfg = json.loads(sys.argv[1])
def mem():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
marks = [("start", mem())]
import numpy as np
import torch
torch.set_num_threads(cfg["threads"])
from onnxstyle.reference.vgg import VGG19, reference_features, reference_loss_and_grad
from onnxstyle.reference.weights import load_caffe
from onnxstyle.runtime.image_io import load_image, to_nchw
from onnxstyle.spec import LossSpec
marks.append(("libraries", mem()))
spec = LossSpec()
model = VGG19(load_caffe(), last=spec.deepest, pooling=spec.pooling).eval()
marks.append(("model", mem()))
content = load_image(cfg["content"], cfg["size"])[0]
style = load_image(cfg["style"], cfg["size"])[0]
h, w = content.shape[:2]
import contextlib
# torch's fastest CPU path where the CPU has native bf16: autocast, as a torch user writes it.
cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cfg.get("autocast") else contextlib.nullcontext
with torch.no_grad():
    ct = reference_features(model, spec, torch.from_numpy(to_nchw(content)))
    st = reference_features(model, spec, torch.from_numpy(to_nchw(style)))
targets = {k: v for k, v in ct.items() if k.startswith("content_")}
targets.update({k: v for k, v in st.items() if k.startswith("gram_")})
targets["guide"] = torch.ones((1, 1, h, w))
targets["temporal_target"] = torch.zeros((1, 3, h, w)); targets["temporal_map"] = torch.zeros((1, 1, h, w))
marks.append(("targets", mem()))
x = torch.from_numpy(to_nchw(content)).requires_grad_(True)
opt = torch.optim.LBFGS([x], lr=1, history_size=20, max_iter=cfg["evals"], max_eval=cfg["evals"],
                        tolerance_grad=-1, tolerance_change=-1, line_search_fn="strong_wolfe")
n = [0]
def closure():
    with torch.no_grad():
        x.clamp_(0, 1)
    with cast():
        loss, g, _ = reference_loss_and_grad(model, spec, x.detach(), targets)
    n[0] += 1
    x.grad = g.float()
    return torch.tensor(loss)
while n[0] < cfg["evals"]:
    before = n[0]
    opt.step(closure)
    if n[0] == before:
        break
marks.append(("optimizer", mem()))
print("@@mem " + json.dumps({"marks": marks, "hw": [h, w], "evaluations": n[0]}), flush=True)
'''


def _run(script: str, cfg: Any, threads: int, timeout: int = 3600) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        raise RuntimeError(f"worker failed ({r.returncode}):\n{r.stderr[-3000:]}")
    out = json.loads(lines[-1][len(MARK):])
    out["wall_s"] = time.monotonic() - t0
    return out


def measure_size(size: int, args: argparse.Namespace, models: Path, content: Path, style: Path, tmp: Path, threads: int) -> dict[str, Any]:
    from onnxstyle.runtime.image_io import fit_size, probe_image
    from onnxstyle.runtime.settings import RunSettings

    h, w = fit_size(*probe_image(content).oriented, size)
    row: dict[str, Any] = {"size": size, "hw": [h, w], "ours": {}}
    for device in args.devices:
        cli_args = ["stylize", str(content), str(style), "-o", str(tmp / f"o{size}.png"), "--models", str(models),
                    "--size", str(size), "--scales", str(size), "--iterations", str(args.evals), "--device", device, "-q"]
        cli = _run(CLI, cli_args, threads)
        if cli["code"] != 0:
            raise RuntimeError(f"stylize at {size} px on {device} exited {cli['code']}")
        cfg = {"models": str(models), "size": size, "evals": args.evals, "device": device, "content": str(content),
               "style": str(style), "optimizer": RunSettings().optimizer}
        phases = _run(PHASES, cfg, threads)
        estimate = dry_run_estimate(models, device, h, w, size, args.evals)
        row["ours"][device] = {"peak": cli["peak"], "wall_s": cli["wall_s"], "phases": phases, "estimate": estimate}
        print(f"  {size} px {device}: peak {cli['peak'] / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB ({phases['provider']})", flush=True)
    sides = {"torch": False, "torch-bf16": True} if args.bf16 else {"torch": False}
    for name, autocast in sides.items():
        cfg = {"size": size, "evals": args.evals, "content": str(content), "style": str(style), "threads": threads, "autocast": autocast}
        t = _run(TORCH, cfg, threads)
        row[name] = {"peak": t["marks"][-1][1], "marks": t["marks"], "wall_s": t["wall_s"], "evaluations": t["evaluations"]}
        print(f"  {size} px {name}: peak {row[name]['peak'] / 2**20:.0f} MiB", flush=True)
    return row


def dry_run_estimate(models: Path, device: str, h: int, w: int, size: int, evals: int) -> int:
    """What `stylize --dry-run` says for this run: the plan's estimated peak."""
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.settings import EngineConfig, RunSettings

    st = Stylizer(models, EngineConfig(device=device))
    return st.plan((h, w), RunSettings(size=size, scales=(size,), iterations=evals, max_memory=2**50)).peak


def breakdown(phases: dict[str, Any]) -> dict[str, float]:
    """Each phase's raise of the peak (VmHWM), in MiB; 'start' is the bare interpreter."""
    marks = phases["marks"]
    out, last = {}, 0
    for name, m in marks:
        out[name] = (m["VmHWM"] - last) / 2**20
        last = m["VmHWM"]
    return out


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Peak memory: `onnxstyle stylize` against torch, same loss, same evaluations",
        "",
        f"{m['cpu']}, {m['physical_cores']} cores, {m['threads']} threads; onnxruntime {m['onnxruntime']}, "
        f"torch {m['torch']}, openvino {res.get('openvino')}; {res['evals']} evaluations, single scale; "
        f"load average at start {m['loadavg_start'][0]:.2f}. Peak = VmHWM of the whole process.",
        "",
        "torch: fp32 eager; torch bf16: the same under `torch.autocast('cpu', dtype=torch.bfloat16)` (where the CPU has "
        "native bf16). The ratio is against the smaller torch peak.",
        "",
        "| size | device | onnxstyle peak | torch peak | torch bf16 peak | ratio | estimate (dry-run) | estimate / peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in res["rows"]:
        tp = row["torch"]["peak"]
        tb = row.get("torch-bf16", {}).get("peak")
        best = min(tp, tb) if tb else tp
        for dev, o in row["ours"].items():
            lines.append(
                f"| {row['hw'][1]}x{row['hw'][0]} | {dev} ({o['phases']['provider']}) | {o['peak'] / 2**20:.0f} MiB | {tp / 2**20:.0f} MiB | "
                f"{f'{tb / 2**20:.0f} MiB' if tb else '-'} | {o['peak'] / best:.2f} | {o['estimate'] / 2**20:.0f} MiB | "
                f"{o['estimate'] / o['peak']:.2f} |"
            )
    lines += ["", "What raises the peak, phase by phase (MiB; each phase's increase of the high-water mark):", ""]
    names = ["start", "libraries", "sessions", "features pass", "features released", "loss_grad pass", "optimizer"]
    lines += ["| size | device | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 2)]
    for row in res["rows"]:
        for dev, o in row["ours"].items():
            b = breakdown(o["phases"])
            lines.append(f"| {row['hw'][1]}x{row['hw'][0]} | {dev} | " + " | ".join(f"{b.get(n, 0):.0f}" for n in names) + " |")
    lines += ["", "torch, the same way:", "", "| size | start | libraries | model | targets | optimizer |", "| --- | --- | --- | --- | --- | --- |"]
    for row in res["rows"]:
        marks, last, cells = row["torch"]["marks"], 0, []
        for _, v in marks:
            cells.append(f"{(v - last) / 2**20:.0f}")
            last = v
        lines.append(f"| {row['hw'][1]}x{row['hw'][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512,1024,1536")
    ap.add_argument("--evals", type=int, default=10)
    ap.add_argument("--devices", default="auto,cpu")
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--recheck", action="store_true", help="recompute the estimates of <out>/memory.json (after a recalibration), measure nothing")
    args = ap.parse_args()
    args.devices = [d for d in args.devices.split(",") if d]
    from speed import machine  # noqa: E402  (the shared machine description)

    from onnxstyle.autoexport import resolve_models
    from onnxstyle.runtime.providers import physical_cores
    from onnxstyle.exportdir import export_settings_for

    models = args.models or resolve_models(export_settings_for("gatys"), log=print).folder
    if args.recheck:
        res = json.loads((args.out / "memory.json").read_text())
        for row in res["rows"]:
            for device, o in row["ours"].items():
                o["estimate"] = dry_run_estimate(models, device, *row["hw"], row["size"], res["evals"])
        (args.out / "memory.json").write_text(json.dumps(res, indent=1) + "\n")
        (args.out / "memory.md").write_text(markdown(res))
        print(markdown(res))
        return
    shared = ROOT.parent / "shared" / "images"
    content = shared / "tubingen.jpg" if (shared / "tubingen.jpg").is_file() else ROOT / "onnxstyle" / "data" / "tubingen.jpg"
    style = ROOT / "onnxstyle" / "data" / "starry_night.jpg"
    threads = physical_cores()
    from onnxstyle.runtime.backends import available_backends

    args.bf16 = available_backends().bf16_native  # torch's autocast side only where bf16 is native
    try:
        import openvino

        ov_version = openvino.__version__
    except ImportError:
        ov_version = None
    res: dict[str, Any] = {"machine": machine(threads), "openvino": ov_version, "evals": args.evals, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            res["rows"].append(measure_size(size, args, models, content, style, Path(tmp), threads))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out / "memory.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
