"""onnxstyle vs torch eager on the same machine, in one run: speed, start-up, memory, efficiency.

Both sides compute the identical loss (the default gatys export's loss_grad.onnx through
``Engine.loss_grad`` on the CPU provider, and ``reference_loss_and_grad``: torch autograd of
the same loss with the same Caffe weights, layers and pooling) on Tübingen × The Starry
Night, with the same number of threads (onnxruntime intra-op threads = torch.set_num_threads).
Every figure is reported as a ratio of two measurements taken in this one run.

    python benchmarks/speed.py                      # the full measurement (256, 512, 1024 px)
    python benchmarks/speed.py --quick --sizes 64   # smoke run, seconds

Each side runs in its own subprocess (the onnxstyle one with torch blocked from importing),
so start-up times and peak RSS never mix. Writes <out>/speed.json and <out>/speed.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDES = ("onnxstyle", "torch")
MARK = "@@speed "  # worker result lines; anything else a library prints on stdout is ignored

TARGETS = {
    "per_eval_speedup": 2.0,  # torch time / onnxstyle time at 512 px, at least
    "startup_speedup": 4.0,  # torch start-up / onnxstyle start-up, at least
    "rss_fraction": 0.40,  # onnxstyle peak RSS / torch peak RSS at 512 px, at most
    "efficiency": 0.60,  # achieved FLOP/s / ceiling FLOP/s, at least
}

# One script for both sides, run with `python -c`: it is all a process does, so its start-up
# and peak RSS are those of a small program using that side. Argument: a JSON config.
#   mode "once":  set up, evaluate `evals` times, report, exit (start-up and peak RSS)
#   mode "serve": set up, evaluate once, then answer "run N" lines with N timed evaluations
WORKER = r'''
import json, sys, time
T_BEGIN = time.monotonic()
cfg = json.loads(sys.argv[1])
side = cfg["side"]
if side == "onnxstyle":
    sys.modules["torch"] = None  # the runtime must not need torch: any import of it now fails
sys.path.insert(0, cfg["root"])
import resource
from pathlib import Path
import numpy as np
from onnxstyle.runtime.image_io import load_image, resize_longest, resize_to, to_nchw

def emit(**kw):
    # Peak RSS of this process image: VmHWM. ru_maxrss is not used for the figure because on
    # Linux it starts from the parent's high-water mark when the child is spawned by vfork/exec.
    kw["ru_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kw["maxrss_kb"] = kw["ru_maxrss_kb"]
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    kw["maxrss_kb"] = int(line.split()[1])
    except OSError:
        pass
    sys.stdout.write("@@speed " + json.dumps(kw) + "\n")
    sys.stdout.flush()

h, w = cfg["height"], cfg["width"]
data = Path(cfg["root"]) / "onnxstyle" / "data"
models = Path(cfg["models"])
if side == "onnxstyle":
    from onnxstyle.runtime.engine import Engine
else:
    import torch
    torch.set_num_threads(cfg["threads"])
    from onnxstyle.models.vgg import VGG19, reference_features, reference_loss_and_grad
    from onnxstyle.models.weights import load_caffe, load_weights
    from onnxstyle.spec import LossSpec
T_IMPORTS = time.monotonic()

content = resize_to(load_image(data / "tubingen.jpg")[0], h, w)
style = resize_longest(load_image(data / "starry_night.jpg")[0], max(h, w))
# Away from the content image so that every loss term has a gradient; same pixels both sides.
noise = np.random.default_rng(0).normal(0.0, 0.05, content.shape).astype(np.float32)
x = to_nchw(np.clip(content + noise, 0.0, 1.0))

if side == "onnxstyle":
    from onnxstyle.runtime.settings import EngineConfig
    engine = Engine(models, EngineConfig(device="cpu", threads=cfg["threads"]))
    T_MODEL = time.monotonic()
    ct = engine.features(to_nchw(content))
    st = engine.features(to_nchw(style))
    targets = {k: v for k, v in ct.items() if k.startswith("content_")}
    targets.update({k: v for k, v in st.items() if k.startswith("gram_")})
    targets = {k: np.ascontiguousarray(v, np.float32) for k, v in targets.items()}
    if engine.guided:
        targets["guide"] = np.ones((1, 1, h, w), np.float32)

    def evaluate():
        r = engine.loss_grad(x, targets)
        return r.loss, r.grad
else:
    manifest = json.loads((models / "manifest.json").read_text())
    spec = LossSpec.from_dict(manifest["spec"])
    source = manifest["weights"]["requested"]
    weights = load_caffe() if source == "caffe" else load_weights(source)
    model = VGG19(weights, last=spec.deepest, pooling=spec.pooling).eval()
    T_MODEL = time.monotonic()
    with torch.no_grad():
        ct = reference_features(model, spec, torch.from_numpy(to_nchw(content)))
        st = reference_features(model, spec, torch.from_numpy(to_nchw(style)))
    targets = {k: v for k, v in ct.items() if k.startswith("content_")}
    targets.update({k: v for k, v in st.items() if k.startswith("gram_")})
    if spec.guided:
        targets["guide"] = torch.ones((1, 1, h, w))
    xt = torch.from_numpy(x)

    def evaluate():
        loss, grad, _ = reference_loss_and_grad(model, spec, xt, targets)
        return loss, grad
T_TARGETS = time.monotonic()

loss, grad = evaluate()
T_FIRST = time.monotonic()
if cfg.get("save_grad"):
    np.save(cfg["save_grad"], np.asarray(grad, np.float32))
torch_loaded = sys.modules.get("torch") is not None
emit(event="ready", loss=loss, torch_loaded=torch_loaded, t_begin=T_BEGIN, t_imports=T_IMPORTS,
     t_model=T_MODEL, t_targets=T_TARGETS, t_first=T_FIRST)

if cfg["mode"] == "once":
    for _ in range(cfg["evals"] - 1):
        loss, grad = evaluate()
    emit(event="done", loss=loss, evals=cfg["evals"])
else:
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        times = []
        for _ in range(int(cmd[1])):
            t0 = time.perf_counter()
            loss, grad = evaluate()
            times.append(time.perf_counter() - t0)
        emit(event="times", times=times, loss=loss)
'''

# The ceiling: the best FLOP/s onnxruntime reaches on one large 3x3 convolution (and, for
# reference, torch's conv2d on the same problem), same thread count.
CEILING = r'''
import json, sys, time
cfg = json.loads(sys.argv[1])
side, t, c, n, reps = cfg["side"], cfg["threads"], cfg["channels"], cfg["size"], cfg["repeats"]
if side == "onnxstyle":
    sys.modules["torch"] = None
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((1, c, n, n), dtype=np.float32)
wt = (rng.standard_normal((c, c, 3, 3), dtype=np.float32) * 0.02)
b = np.zeros(c, np.float32)
if side == "onnxstyle":
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "conv3x3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, n, n])],
        [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = t
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    run = lambda: sess.run(["y"], {"x": x})
else:
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(t)
    xt, wt_, bt = torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b)
    def run():
        with torch.no_grad():
            return F.conv2d(xt, wt_, bt, padding=1)
for _ in range(2):
    run()
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
sys.stdout.write("@@speed " + json.dumps({"times": times}) + "\n")
'''


# ---------------------------------------------------------------- subprocess plumbing


class WorkerError(RuntimeError):
    pass


# Bytecode of every module the workers import goes to a folder private to this run (set in
# main): both sides start like an installed package, with .pyc files, even where
# PYTHONDONTWRITEBYTECODE is set, and nothing is written into the source tree. The first,
# discarded runs compile it.
PYCACHE: str | None = None


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    if PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return env


class Worker:
    """One subprocess running WORKER; results are the lines it marks with MARK."""

    def __init__(self, cfg: dict[str, Any], threads: int, stdin: bool) -> None:
        self.cfg = cfg
        self.err = tempfile.TemporaryFile(mode="w+")
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(cfg)],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env=_env(threads),
            cwd=ROOT,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        self.proc.wait()
        self.err.seek(0)
        tail = "".join(self.err.read().splitlines(True)[-25:])
        raise WorkerError(f"{self.cfg['side']} worker exited ({self.proc.returncode}) without a result:\n{tail}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def worker_cfg(side: str, models: Path, threads: int, h: int, w: int, mode: str, evals: int = 1, save_grad: str | None = None) -> dict[str, Any]:
    return {"side": side, "root": str(ROOT), "models": str(models), "threads": threads, "height": h, "width": w,
            "mode": mode, "evals": evals, "save_grad": save_grad}


def run_once(side: str, models: Path, threads: int, h: int, w: int, evals: int) -> dict[str, Any]:
    """A fresh process: set up, `evals` gradient evaluations, exit. Times relative to spawn."""
    wk = Worker(worker_cfg(side, models, threads, h, w, "once", evals), threads, stdin=False)
    try:
        ready = wk.read()
        done = wk.read()
    finally:
        wk.close()
    if side == "onnxstyle" and ready["torch_loaded"]:
        raise WorkerError("the onnxstyle runtime imported torch")
    t0 = wk.t_spawn
    return {
        "startup_s": ready["t_first"] - t0,
        "phases_s": {
            "interpreter": ready["t_begin"] - t0,
            "imports": ready["t_imports"] - ready["t_begin"],
            "images+model": ready["t_model"] - ready["t_imports"],
            "targets": ready["t_targets"] - ready["t_model"],
            "first_eval": ready["t_first"] - ready["t_targets"],
        },
        "rss_after_first_eval_mb": ready["maxrss_kb"] / 1024,
        "peak_rss_mb": done["maxrss_kb"] / 1024,  # VmHWM
        "ru_maxrss_mb": done["ru_maxrss_kb"] / 1024,  # for the record: may start from the parent's high-water mark
        "loss": done["loss"],
    }


def run_ceiling(side: str, threads: int, channels: int, size: int, repeats: int) -> dict[str, Any]:
    cfg = {"side": side, "threads": threads, "channels": channels, "size": size, "repeats": repeats}
    out = subprocess.run([sys.executable, "-c", CEILING, json.dumps(cfg)], capture_output=True, text=True,
                         env=_env(threads), cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(MARK)]
    if out.returncode != 0 or not lines:
        raise WorkerError(f"{side} ceiling run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    times = json.loads(lines[-1][len(MARK) :])["times"]
    flops = 2 * channels * channels * 9 * size * size
    return {"flops": flops, "times_s": times, "best_s": min(times), "flops_per_s": flops / min(times)}


# ---------------------------------------------------------------- the figures


def conv_flops(spec: Any, h: int, w: int) -> int:
    """Convolution FLOPs of one loss+gradient: the forward convs up to the deepest layer in
    use plus as many input-gradient convs in the backward (2·Cin·Cout·9·H·W each, at the
    layer's resolution; each pool floor-halves H and W). Grams, ReLUs, pools not counted."""
    from onnxstyle.spec import LAYER_INDEX, LAYERS

    fwd = 0
    for _name, kind, cin, cout in LAYERS[: LAYER_INDEX[spec.deepest] + 1]:
        if kind == "conv":
            fwd += 2 * cin * cout * 9 * h * w
        elif kind == "pool":
            h, w = h // 2, w // 2
    return 2 * fwd


def per_eval(models: Path, threads: int, side_px: int, repeats: int, warmup: int, grads: Path) -> dict[str, Any]:
    """Both sides alive at once; timed evaluations alternate between them (order swapped every
    round), so that a change in the machine's load hits both alike."""
    h, w = side_px * 3 // 4, side_px
    workers: dict[str, Worker] = {}
    ready: dict[str, dict[str, Any]] = {}
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    try:
        for s in SIDES:  # one at a time: set-up is not what is timed here
            workers[s] = Worker(worker_cfg(s, models, threads, h, w, "serve", save_grad=str(grads / f"{s}-{side_px}.npy")),
                                threads, stdin=True)
            ready[s] = workers[s].read()
            if warmup:
                workers[s].send(f"run {warmup}")
                workers[s].read()
        if ready["onnxstyle"]["torch_loaded"]:
            raise WorkerError("the onnxstyle runtime imported torch")
        for r in range(repeats):
            for s in SIDES if r % 2 == 0 else SIDES[::-1]:
                time.sleep(0.1)  # let the other side's idle threads stop spinning
                workers[s].send("run 1")
                times[s] += workers[s].read()["times"]
    finally:
        for wk in workers.values():
            wk.close()
    import numpy as np

    go, gt = np.load(grads / f"onnxstyle-{side_px}.npy"), np.load(grads / f"torch-{side_px}.npy")
    lo, lt = ready["onnxstyle"]["loss"], ready["torch"]["loss"]
    return {
        "height": h,
        "width": w,
        "repeats": repeats,
        "warmup": warmup + 1,
        "times_s": times,
        "median_s": {s: statistics.median(times[s]) for s in SIDES},
        "loss": {"onnxstyle": lo, "torch": lt, "rel_diff": abs(lo - lt) / max(abs(lt), 1e-30)},
        "grad_rel_l2_diff": float(np.linalg.norm(go - gt) / max(float(np.linalg.norm(gt)), 1e-30)),
    }


def machine(threads: int) -> dict[str, Any]:
    from onnxstyle import __version__
    from onnxstyle.runtime.providers import physical_cores

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": model,
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads": threads,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu"),
        "onnx": version("onnx"),
        "onnxstyle": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------- report


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    head = res["headline_px"]
    pe = res["per_eval"]
    su, rss, eff, ceil = res["startup"], res["peak_rss"], res["efficiency"], res["ceiling"]
    lines = [
        "# onnxstyle vs torch eager: speed, start-up, memory (one run, one machine)",
        "",
    ]
    if cfg["quick"]:
        lines += ["**Quick smoke run (`--quick`): too few repeats and too small sizes to mean anything.**", ""]
    if max(m["loadavg_start"][0], res["loadavg_end"][0]) > 0.5 * m["usable_cpus"]:
        lines += [
            f"**The machine was busy (load average {m['loadavg_start'][0]:.1f} at start, {res['loadavg_end'][0]:.1f} "
            f"at end, on {m['usable_cpus']} CPUs, this run included): timings are unreliable; rerun on a quiet machine.**",
            "",
        ]
    lines += [
        f"{m['cpu']}, {m['physical_cores']} physical cores ({m['usable_cpus']} usable CPUs), "
        f"**{m['threads']} threads on both sides**; Python {m['python']}, numpy {m['numpy']}, "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']} (CPU provider), onnxstyle {m['onnxstyle']}; {m['date']}; "
        f"load average {m['loadavg_start'][0]:.2f} at start, {res['loadavg_end'][0]:.2f} at end.",
        "",
        "onnxstyle: loss_grad.onnx of the default gatys export through `Engine.loss_grad`. "
        "torch: `reference_loss_and_grad` (eager autograd of the identical loss, same Caffe weights, "
        "layers and pooling). Tübingen × The Starry Night, 4:3. Ratios compare figures from this one run.",
        "",
        "| figure | onnxstyle | torch | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for px in cfg["sizes"]:
        r = pe[str(px)]
        o, t = r["median_s"]["onnxstyle"], r["median_s"]["torch"]
        tgt = f"≥ {TARGETS['per_eval_speedup']:.1f}× faster: {_met(t / o >= TARGETS['per_eval_speedup'])}" if px == head else ""
        lines.append(
            f"| loss + gradient, {r['width']}x{r['height']} (median of {r['repeats']}) | {o * 1e3:.0f} ms | {t * 1e3:.0f} ms "
            f"| {t / o:.2f}× faster | {tgt} |"
        )
    o, t = su["median_s"]["onnxstyle"], su["median_s"]["torch"]
    lines.append(
        f"| start-up to first gradient, {su['width']}x{su['height']} (median of {su['runs']} processes) | {o:.2f} s | {t:.2f} s "
        f"| {t / o:.2f}× faster | ≥ {TARGETS['startup_speedup']:.0f}× faster: {_met(t / o >= TARGETS['startup_speedup'])} |"
    )
    o, t = rss["peak_mb"]["onnxstyle"], rss["peak_mb"]["torch"]
    lines.append(
        f"| peak RSS (VmHWM), {rss['evals']} evaluations at {rss['width']}x{rss['height']} | {o:.0f} MB | {t:.0f} MB "
        f"| {100 * o / t:.0f}% of torch | ≤ {100 * TARGETS['rss_fraction']:.0f}%: {_met(o / t <= TARGETS['rss_fraction'])} |"
    )
    for px in cfg["sizes"]:
        e = eff[str(px)]
        eo, et = e["fraction_of_ceiling"]["onnxstyle"], e["fraction_of_ceiling"]["torch"]
        tgt = f"≥ {100 * TARGETS['efficiency']:.0f}% of ceiling: {_met(eo >= TARGETS['efficiency'])}" if px == head else ""
        lines.append(
            f"| efficiency at {e['width']}x{e['height']} ({e['gflop']:.1f} GFLOP of convs per evaluation) "
            f"| {e['gflops']['onnxstyle']:.1f} GFLOP/s = {100 * eo:.0f}% | {e['gflops']['torch']:.1f} GFLOP/s = {100 * et:.0f}% "
            f"| {eo / et:.2f}× | {tgt} |"
        )
    co, ct = ceil["onnxstyle"]["flops_per_s"] / 1e9, ceil["torch"]["flops_per_s"] / 1e9
    lines.append(
        f"| ceiling: one 3x3 conv {ceil['channels']}→{ceil['channels']} at {ceil['size']}x{ceil['size']} (best of {ceil['repeats']}) "
        f"| {co:.1f} GFLOP/s | {ct:.1f} GFLOP/s (torch conv2d) | {co / ct:.2f}× | — |"
    )
    lines += [
        "",
        "Ratio: torch time / onnxstyle time for times (above 1: onnxstyle faster); onnxstyle / torch for "
        "memory and efficiency. Efficiency is the convolution FLOPs of one evaluation (forward convs up to "
        "the deepest layer + the input-gradient convs of the backward) over the median time, as a fraction "
        "of the onnxruntime ceiling on the line below it (the torch column is measured against the same ceiling).",
        "",
        "Same loss on both sides (first evaluation): "
        + "; ".join(
            f"{pe[str(px)]['width']}x{pe[str(px)]['height']}: loss differs by {pe[str(px)]['loss']['rel_diff']:.1e}, "
            f"gradient by {pe[str(px)]['grad_rel_l2_diff']:.1e} (relative L2)"
            for px in cfg["sizes"]
        )
        + ".",
        "",
        "Start-up phases (median, s): "
        + "; ".join(
            s + ": " + ", ".join(f"{k} {v:.2f}" for k, v in su["phases_median_s"][s].items()) for s in SIDES
        )
        + ".",
        "",
        f"Reproduce: `{res['command']}`",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> None:
    from onnxstyle.runtime.providers import physical_cores

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512,1024", help="longest sides in px (4:3 images), comma-separated")
    ap.add_argument("--threads", type=int, default=None, help="threads for both sides (default: physical cores)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true", help="smoke run: few repeats, small start-up/RSS sizes")
    ap.add_argument("--models", type=Path, default=None, help="export folder (default: the gatys export in the cache, made if missing)")
    ap.add_argument("--repeats", type=int, default=None, help="timed evaluations per side and size (default 10/7/3 by size)")
    ap.add_argument("--startup-runs", type=int, default=None, help="processes per side for start-up (default 5)")
    ap.add_argument("--startup-size", type=int, default=None, help="longest side for start-up (default 128)")
    ap.add_argument("--rss-size", type=int, default=None, help="longest side for peak RSS (default 512)")
    ap.add_argument("--rss-evals", type=int, default=3)
    args = ap.parse_args()

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 32:
        ap.error("--sizes: longest sides of at least 32 px")
    threads = args.threads or physical_cores()

    def say(msg: str) -> None:
        print(msg, flush=True)

    if args.models is not None:
        models = args.models
    else:
        from onnxstyle.autoexport import resolve_models
        from onnxstyle.spec import export_settings_for

        models = resolve_models(export_settings_for("gatys"), log=say).folder
    from onnxstyle.contract import read_manifest

    spec = read_manifest(models).spec
    info = machine(threads)
    say(f"{info['cpu']}, {threads} threads for both sides; export {models}")
    t_run = time.perf_counter()

    global PYCACHE
    with tempfile.TemporaryDirectory(prefix="onnxstyle-speed-") as tmp:
        PYCACHE = str(Path(tmp) / "pycache")
        res = measure(args, sizes, threads, models, spec, info, Path(tmp), say)
    res["wall_s"] = time.perf_counter() - t_run
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out / "speed.md").write_text(md)
    say("")
    say(md)
    say(f"wrote {args.out / 'speed.json'} and {args.out / 'speed.md'} ({res['wall_s']:.0f} s)")


def measure(args: argparse.Namespace, sizes: list[int], threads: int, models: Path, spec: Any,
            info: dict[str, Any], tmp: Path, say: Any) -> dict[str, Any]:
    from onnxstyle.contract import read_manifest

    quick = args.quick
    startup_px = args.startup_size or (min(128, min(sizes)) if quick else 128)
    rss_px = args.rss_size or (min(512, max(sizes)) if quick else 512)
    startup_runs = args.startup_runs or (2 if quick else 5)
    ceil_reps = 3 if quick else 10

    def repeats_for(px: int) -> int:
        if args.repeats:
            return args.repeats
        if quick:
            return 3
        return 10 if px <= 256 else 7 if px <= 512 else 3

    def warmup_for(px: int) -> int:  # untimed evaluations after the first (which builds the sessions)
        return 1 if quick or px > 512 else 2

    # 4 (ceiling) first, on a quiet process table.
    ch, n = 256, 128
    ceiling: dict[str, Any] = {"channels": ch, "size": n, "repeats": ceil_reps}
    for s in SIDES:
        ceiling[s] = run_ceiling(s, threads, ch, n, ceil_reps)
        say(f"ceiling {s:9s} {ceiling[s]['flops_per_s'] / 1e9:7.1f} GFLOP/s (3x3 conv {ch}->{ch} at {n}x{n})")

    # 1. per gradient evaluation
    per: dict[str, Any] = {}
    for px in sizes:
        reps = repeats_for(px)
        r = per_eval(models, threads, px, reps, warmup=warmup_for(px), grads=tmp)
        per[str(px)] = r
        o, t = r["median_s"]["onnxstyle"], r["median_s"]["torch"]
        say(f"per-eval  {r['width']}x{r['height']}: onnxstyle {o * 1e3:.0f} ms, torch {t * 1e3:.0f} ms, "
            f"{t / o:.2f}x (median of {reps}; grad rel diff {r['grad_rel_l2_diff']:.1e})")

    # 2. start-up: one discarded pair first (file cache, optimized-model cache, .pyc), then alternate.
    sh, sw = startup_px * 3 // 4, startup_px
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    for i in range(startup_runs + 1):
        for s in SIDES if i % 2 == 0 else SIDES[::-1]:
            r = run_once(s, models, threads, sh, sw, evals=1)
            if i:
                runs[s].append(r)
    startup = {
        "height": sh,
        "width": sw,
        "runs": startup_runs,
        "startup_s": {s: [r["startup_s"] for r in runs[s]] for s in SIDES},
        "median_s": {s: statistics.median(r["startup_s"] for r in runs[s]) for s in SIDES},
        "phases_median_s": {s: {k: statistics.median(r["phases_s"][k] for r in runs[s]) for k in runs[s][0]["phases_s"]} for s in SIDES},
    }
    o, t = startup["median_s"]["onnxstyle"], startup["median_s"]["torch"]
    say(f"start-up  {sw}x{sh}: onnxstyle {o:.2f} s, torch {t:.2f} s, {t / o:.2f}x (median of {startup_runs})")

    # 3. peak RSS: a fresh process per side.
    rh, rw = rss_px * 3 // 4, rss_px
    rr = {s: run_once(s, models, threads, rh, rw, evals=args.rss_evals) for s in SIDES}
    peak = {
        "height": rh,
        "width": rw,
        "evals": args.rss_evals,
        "peak_mb": {s: rr[s]["peak_rss_mb"] for s in SIDES},
        "after_first_eval_mb": {s: rr[s]["rss_after_first_eval_mb"] for s in SIDES},
    }
    o, t = peak["peak_mb"]["onnxstyle"], peak["peak_mb"]["torch"]
    say(f"peak RSS  {rw}x{rh}: onnxstyle {o:.0f} MB, torch {t:.0f} MB, {100 * o / t:.0f}%")

    # 4. efficiency from the per-eval medians.
    ceil = ceiling["onnxstyle"]["flops_per_s"]
    eff: dict[str, Any] = {}
    for px in sizes:
        r = per[str(px)]
        fl = conv_flops(spec, r["height"], r["width"])
        rate = {s: fl / r["median_s"][s] for s in SIDES}
        eff[str(px)] = {
            "height": r["height"],
            "width": r["width"],
            "gflop": fl / 1e9,
            "gflops": {s: rate[s] / 1e9 for s in SIDES},
            "fraction_of_ceiling": {s: rate[s] / ceil for s in SIDES},
        }
        say(f"efficiency {r['width']}x{r['height']}: onnxstyle {100 * rate['onnxstyle'] / ceil:.0f}%, "
            f"torch {100 * rate['torch'] / ceil:.0f}% of {ceil / 1e9:.1f} GFLOP/s")

    head = 512 if 512 in sizes else max(sizes)
    hp = per[str(head)]["median_s"]
    checks = {
        "per_eval_speedup": hp["torch"] / hp["onnxstyle"],
        "startup_speedup": startup["median_s"]["torch"] / startup["median_s"]["onnxstyle"],
        "rss_fraction": peak["peak_mb"]["onnxstyle"] / peak["peak_mb"]["torch"],
        "efficiency": eff[str(head)]["fraction_of_ceiling"]["onnxstyle"],
    }
    met = {k: (v <= TARGETS[k]) if k == "rss_fraction" else (v >= TARGETS[k]) for k, v in checks.items()}
    cmd = "python benchmarks/speed.py" + ("" if args.sizes == "256,512,1024" else f" --sizes {args.sizes}") + (
        " --quick" if args.quick else "") + ("" if args.threads is None else f" --threads {args.threads}")
    res = {
        "command": cmd,
        "quick": args.quick,
        "config": {"sizes": sizes, "threads": threads, "quick": args.quick, "models": str(models),
                   "export_settings_key": read_manifest(models).data.get("settings_key"), "spec": spec.to_dict()},
        "machine": info,
        "loadavg_end": os.getloadavg(),
        "headline_px": head,
        "ceiling": ceiling,
        "per_eval": per,
        "startup": startup,
        "startup_runs_detail": runs,
        "peak_rss": peak,
        "peak_rss_detail": rr,
        "efficiency": eff,
        "targets": TARGETS,
        "ratios": checks,
        "met": met,
    }
    return res


if __name__ == "__main__":
    main()
