"""Every onnxstyle backend and precision vs torch eager on one machine, in one run: speed,
gradient agreement, start-up, memory, efficiency.

The sides compute the identical loss: the default gatys export's loss_grad.onnx through
``Engine.loss_grad`` on each backend this machine has (onnxruntime CPU fp32, OpenVINO fp32,
OpenVINO bf16 where the CPU computes bf16 natively), and ``reference_loss_and_grad``: torch
autograd of the same loss with the same Caffe weights, layers and pooling. Tübingen × The
Starry Night, the same number of threads everywhere. Every figure is reported next to
torch's from this one run.

    python benchmarks/speed.py                      # the full measurement (256, 512, 1024 px)
    python benchmarks/speed.py --quick --sizes 64   # smoke run, a minute

Each side runs in its own subprocess (the onnxstyle ones with torch blocked from importing),
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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARK = "@@speed "  # worker result lines; anything else a library prints on stdout is ignored

TARGETS = {
    "per_eval_speedup": 2.0,  # torch time / time of the fastest onnxstyle side at 512 px, at least
    "startup_s": 0.6,  # start-up to the first gradient of the side --device auto picks, warm caches, at most
    "rss_fraction": 0.40,  # the auto side's peak RSS / torch's at 512 px, at most
    "efficiency": 0.60,  # onnxruntime fp32's achieved FLOP/s / the onnxruntime ceiling at 512 px, at least
}


@dataclass(frozen=True)
class Side:
    """One contestant: an onnxstyle backend at a precision, or torch."""

    name: str  # key in the JSON
    label: str  # column heading
    kind: str  # "onnxstyle" or "torch"
    device: str = "cpu"  # EngineConfig.device
    precision: str = "fp32"  # EngineConfig.precision


ALL_SIDES = (
    Side("ort-fp32", "onnxruntime fp32", "onnxstyle", "cpu", "fp32"),
    Side("ov-fp32", "OpenVINO fp32", "onnxstyle", "openvino", "fp32"),
    Side("ov-bf16", "OpenVINO bf16", "onnxstyle", "openvino", "bf16"),
    Side("torch", "torch eager", "torch"),
    # The loss under torch.autocast("cpu", dtype=torch.bfloat16), backward through it: what a
    # torch user gets from bf16 on a CPU that computes it natively. Timed against torch eager
    # like the onnxstyle sides, so its ratio is its gain over fp32 eager.
    Side("torch-bf16", "torch bf16 autocast", "torch-bf16", precision="bf16"),
)
SIDE = {s.name: s for s in ALL_SIDES}


def available_sides(asked: bool = False) -> list[Side]:
    """The onnxstyle sides this machine can run (bf16 only where it is native), then torch.
    torch bf16 autocast runs on any CPU (emulated without native bf16), so named in --sides it
    is measured anyway: that is how to show fp32 eager is torch's fastest path on such a CPU."""
    from onnxstyle.runtime.backends import available_backends

    a = available_backends()
    ok = {
        "ort-fp32": "CPUExecutionProvider" in a.ort_providers,
        "ov-fp32": a.openvino,
        "ov-bf16": a.openvino and a.bf16_native,
        "torch": True,
        "torch-bf16": a.bf16_native or asked,
    }
    return [s for s in ALL_SIDES if ok[s.name]]


def auto_side() -> str | None:
    """The side ``--device auto --precision auto`` runs on this machine (None: a GPU, not measured here)."""
    from onnxstyle.runtime.backends import available_backends, select_backend
    from onnxstyle.runtime.settings import EngineConfig

    c = select_backend(available_backends(), EngineConfig())
    if c.backend == "openvino":
        return f"ov-{c.precision}"
    return "ort-fp32" if c.providers[:1] == ("CPUExecutionProvider",) else None


def pick_sides(text: str | None) -> list[Side]:
    """``--sides`` (comma-separated names; default: all available); torch is always included."""
    if not text:
        return available_sides()
    names = [n.strip() for n in text.split(",") if n.strip()]
    have = available_sides(asked="torch-bf16" in names)
    unknown = [n for n in names if n not in SIDE]
    if unknown:
        raise SystemExit(f"--sides: unknown {', '.join(unknown)}; choose from {', '.join(SIDE)}")
    missing = [n for n in names if SIDE[n] not in have]
    if missing:
        raise SystemExit(f"--sides: not available on this machine: {', '.join(missing)}")
    if not any(SIDE[n].kind == "onnxstyle" for n in names):
        raise SystemExit("--sides: name at least one onnxstyle side (torch is always measured)")
    return [s for s in have if s.name in names or s.kind == "torch"]


# One script for every side, run with `python -c`: it is all a process does, so its start-up
# and peak RSS are those of a small program using that side. Argument: a JSON config.
#   mode "once":  set up, evaluate `evals` times, report, exit (start-up and peak RSS)
#   mode "serve": set up, evaluate once, then answer "run N" lines with N timed evaluations
WORKER = r'''
import json, sys, time
T_BEGIN = time.monotonic()
cfg = json.loads(sys.argv[1])
ours = cfg["kind"] == "onnxstyle"
if ours:
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
                elif line.startswith("VmRSS:"):
                    kw["rss_kb"] = int(line.split()[1])
    except OSError:
        pass
    sys.stdout.write("@@speed " + json.dumps(kw) + "\n")
    sys.stdout.flush()

h, w = cfg["height"], cfg["width"]
data = Path(cfg["root"]) / "onnxstyle" / "data"
models = Path(cfg["models"])
if ours:
    from onnxstyle.runtime.engine import Engine
    from onnxstyle.runtime.settings import EngineConfig
else:
    import torch
    torch.set_num_threads(cfg["threads"])
    from onnxstyle.reference.vgg import VGG19, reference_features, reference_loss, reference_loss_and_grad
    from onnxstyle.reference.weights import load_caffe, load_weights
    from onnxstyle.spec import LossSpec
T_IMPORTS = time.monotonic()

content = resize_to(load_image(data / "tubingen.jpg")[0], h, w)
style = resize_longest(load_image(data / "starry_night.jpg")[0], max(h, w))
# Away from the content image so that every loss term has a gradient; same pixels everywhere.
noise = np.random.default_rng(0).normal(0.0, 0.05, content.shape).astype(np.float32)
x = to_nchw(np.clip(content + noise, 0.0, 1.0))

if ours:
    engine = Engine(models, EngineConfig(device=cfg["device"], precision=cfg["precision"], threads=cfg["threads"]))
    provider = engine.provider
    T_MODEL = time.monotonic()
    # Targets in fp32 whatever the engine's precision, as Stylizer computes them.
    ct = engine.features(to_nchw(content))
    st = engine.features(to_nchw(style))
    targets = {k: v for k, v in ct.items() if k.startswith("content_")}
    targets.update({k: v for k, v in st.items() if k.startswith("gram_")})
    targets = {k: np.ascontiguousarray(v, np.float32) for k, v in targets.items()}
    if engine.guided:
        targets["guide"] = np.ones((1, 1, h, w), np.float32)
    # (Engine.loss_grad adds the zero temporal inputs of a format-3 graph itself.)

    def evaluate():
        r = engine.loss_grad(x, targets)
        return r.loss, r.grad
else:
    provider = f"torch {torch.__version__} eager"
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
    if spec.temporal:  # a zero weight map switches the temporal term off
        targets["temporal_target"] = torch.zeros((1, 3, h, w))
        targets["temporal_map"] = torch.zeros((1, 1, h, w))
    xt = torch.from_numpy(x)

    autocast = cfg["kind"] == "torch-bf16"

    def evaluate():
        if not autocast:
            loss, grad, _ = reference_loss_and_grad(model, spec, xt, targets)
            return loss, grad
        xg = xt.detach().clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, _ = reference_loss(model, spec, xg, targets)
        total = total.float()
        (grad,) = torch.autograd.grad(total, xg)
        return float(total), grad
    if autocast:
        provider = f"torch {torch.__version__} bf16 autocast"
T_TARGETS = time.monotonic()

loss, grad = evaluate()
T_FIRST = time.monotonic()
if cfg.get("save_grad"):
    np.save(cfg["save_grad"], np.asarray(grad, np.float32))
torch_loaded = sys.modules.get("torch") is not None
emit(event="ready", loss=loss, torch_loaded=torch_loaded, provider=provider, t_begin=T_BEGIN,
     t_imports=T_IMPORTS, t_model=T_MODEL, t_targets=T_TARGETS, t_first=T_FIRST)

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
# main): every side starts like an installed package, with .pyc files, even where
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


def worker_cfg(side: Side, models: Path, threads: int, h: int, w: int, mode: str, evals: int = 1,
               save_grad: str | None = None) -> dict[str, Any]:
    return {"side": side.name, "kind": side.kind, "device": side.device, "precision": side.precision,
            "root": str(ROOT), "models": str(models), "threads": threads, "height": h, "width": w,
            "mode": mode, "evals": evals, "save_grad": save_grad}


def _check_torch_free(side: Side, ready: dict[str, Any]) -> None:
    if side.kind == "onnxstyle" and ready["torch_loaded"]:
        raise WorkerError(f"the onnxstyle runtime imported torch ({side.name})")


def run_once(side: Side, models: Path, threads: int, h: int, w: int, evals: int) -> dict[str, Any]:
    """A fresh process: set up, `evals` gradient evaluations, exit. Times relative to spawn."""
    wk = Worker(worker_cfg(side, models, threads, h, w, "once", evals), threads, stdin=False)
    try:
        ready = wk.read()
        done = wk.read()
    finally:
        wk.close()
    _check_torch_free(side, ready)
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
        "provider": ready["provider"],
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
    from onnxstyle.layers import LAYER_INDEX, LAYERS

    fwd = 0
    for _name, kind, cin, cout in LAYERS[: LAYER_INDEX[spec.deepest] + 1]:
        if kind == "conv":
            fwd += 2 * cin * cout * 9 * h * w
        elif kind == "pool":
            h, w = h // 2, w // 2
    return 2 * fwd


def _rounds(names: list[str], repeats: int) -> list[list[str]]:
    """The order of each timed round: rotated every round and reversed every other one, so
    that each side runs in every position and after every other side about equally often."""
    out = []
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        out.append(order if r % 2 == 0 else order[::-1])
    return out


def _room_for_another(peaks_kb: list[int]) -> bool:
    """Whether one more worker as large as the largest so far fits in what is available
    (with a quarter to spare): at 1024 px four live sides need several GB together."""
    from onnxstyle.runtime.memory import available_bytes

    avail = available_bytes()
    return avail is None or avail >= 1.25 * max(peaks_kb, default=0) * 1024


def per_eval(models: Path, threads: int, px: int, sides: list[Side], repeats: int, warmup: int, grads: Path,
             say: Callable[[str], None]) -> dict[str, Any]:
    """All sides alive at once; timed evaluations alternate among them (see ``_rounds``), so
    that a change in the machine's load hits every side alike. Where memory does not allow
    every side at once, the onnxstyle sides go in groups, each against the same live torch,
    and each side's ratio uses torch's times from its own group."""
    h, w = px * 3 // 4, px
    torch_side = next(s for s in sides if s.kind == "torch")
    pending = [s for s in sides if s.kind != "torch"]
    workers: dict[str, Worker] = {}
    ready: dict[str, dict[str, Any]] = {}
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    torch_of: dict[str, list[float]] = {}  # torch's times in each side's group
    groups: list[list[str]] = []
    peaks: list[int] = []

    def start(s: Side) -> None:
        wk = Worker(worker_cfg(s, models, threads, h, w, "serve", save_grad=str(grads / f"{s.name}-{px}.npy")), threads, stdin=True)
        workers[s.name] = wk
        ready[s.name] = wk.read()
        _check_torch_free(s, ready[s.name])
        if warmup:
            wk.send(f"run {warmup}")
            peaks.append(wk.read()["maxrss_kb"])
        else:
            peaks.append(ready[s.name]["maxrss_kb"])

    try:
        start(torch_side)  # one at a time: set-up is not what is timed here
        while pending:
            live = [pending.pop(0)]
            start(live[0])
            while pending and _room_for_another(peaks):
                live.append(pending.pop(0))
                start(live[-1])
            if pending:
                say(f"  {w}x{h}: not enough memory for every side at once; group {[s.name for s in live]}")
            names = [torch_side.name, *(s.name for s in live)]
            group_torch: list[float] = []
            for order in _rounds(names, repeats):
                for name in order:
                    time.sleep(0.1)  # let the other sides' idle threads stop spinning
                    workers[name].send("run 1")
                    t = workers[name].read()["times"]
                    (group_torch if name == torch_side.name else times[name]).extend(t)
            times[torch_side.name] += group_torch
            for s in live:
                torch_of[s.name] = group_torch
                workers.pop(s.name).close()
            groups.append(names)
    finally:
        for wk in workers.values():
            wk.close()
    return _per_eval_result(h, w, px, sides, repeats, warmup, grads, times, torch_of, groups, ready)


def _per_eval_result(h: int, w: int, px: int, sides: list[Side], repeats: int, warmup: int, grads: Path,
                     times: dict[str, list[float]], torch_of: dict[str, list[float]], groups: list[list[str]],
                     ready: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    gt = np.load(grads / f"torch-{px}.npy").astype(np.float64).ravel()
    lt = ready["torch"]["loss"]
    agreement: dict[str, Any] = {}
    for s in sides:
        if s.kind == "torch":
            continue
        g = np.load(grads / f"{s.name}-{px}.npy").astype(np.float64).ravel()
        ng, nt = float(np.linalg.norm(g)), float(np.linalg.norm(gt))
        agreement[s.name] = {
            "loss_rel_diff": abs(ready[s.name]["loss"] - lt) / max(abs(lt), 1e-30),
            "grad_rel_l2_diff": float(np.linalg.norm(g - gt)) / max(nt, 1e-30),
            "grad_cosine": float(np.dot(g, gt)) / max(ng * nt, 1e-30),
        }
    median = {s.name: statistics.median(times[s.name]) for s in sides}
    torch_median = {n: statistics.median(t) for n, t in torch_of.items()}
    return {
        "height": h,
        "width": w,
        "repeats": repeats,
        "warmup": warmup + 1,
        "groups": groups,
        "times_s": times,
        "median_s": median,
        "torch_median_s": torch_median,  # torch's median in each side's group
        "speedup": {n: torch_median[n] / median[n] for n in torch_median},
        "loss": {s.name: ready[s.name]["loss"] for s in sides},
        "provider": {s.name: ready[s.name]["provider"] for s in sides},
        "agreement": agreement,
    }


def startup(models: Path, threads: int, sides: list[Side], px: int, runs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Spawn to first gradient. One discarded process per side first (file cache, .pyc, the
    onnxruntime optimized-model cache and OpenVINO's compiled-model cache in openvino-cache/
    beside the export), then `runs` processes per side, the order rotating."""
    h, w = px * 3 // 4, px
    names = [s.name for s in sides]
    detail: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for s in sides:
        run_once(s, models, threads, h, w, evals=1)
    for order in _rounds(names, runs):
        for n in order:
            detail[n].append(run_once(SIDE[n], models, threads, h, w, evals=1))
    summary = {
        "height": h,
        "width": w,
        "runs": runs,
        "startup_s": {n: [r["startup_s"] for r in detail[n]] for n in names},
        "median_s": {n: statistics.median(r["startup_s"] for r in detail[n]) for n in names},
        "phases_median_s": {n: {k: statistics.median(r["phases_s"][k] for r in detail[n]) for k in detail[n][0]["phases_s"]}
                            for n in names},
    }
    return summary, detail


def machine(threads: int) -> dict[str, Any]:
    from onnxstyle import __version__
    from onnxstyle.runtime.backends import available_backends
    from onnxstyle.runtime.providers import cpu_model, physical_cores

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    a = available_backends()
    return {
        "cpu": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads": threads,
        "bf16_native": a.bf16_native,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu"),
        "openvino": version("openvino"),
        "onnx": version("onnx"),
        "onnxstyle": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------- report


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _row(label: str, cells: dict[str, str], sides: list[str], target: str = "") -> str:
    return "| " + " | ".join([label, *(cells.get(n, "—") for n in sides), target]) + " |"


def _header(res: dict[str, Any]) -> list[str]:
    m, cfg = res["machine"], res["config"]
    lines = ["# onnxstyle backends vs torch eager: speed, start-up, memory (one run, one machine)", ""]
    if cfg["quick"]:
        lines += ["**Quick smoke run (`--quick`): too few repeats and too small sizes to mean anything.**", ""]
    if max(m["loadavg_start"][0], res["loadavg_end"][0]) > 0.5 * m["usable_cpus"]:
        lines += [
            f"**The machine was busy (load average {m['loadavg_start'][0]:.1f} at start, {res['loadavg_end'][0]:.1f} "
            f"at end, on {m['usable_cpus']} CPUs, this run included): timings are unreliable; rerun on a quiet machine.**",
            "",
        ]
    lines += [
        f"{m['cpu']}, {m['physical_cores']} physical cores ({m['usable_cpus']} usable CPUs, native bf16: "
        f"{'yes' if m['bf16_native'] else 'no'}), **{m['threads']} threads on every side**; Python {m['python']}, "
        f"numpy {m['numpy']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, OpenVINO {m['openvino']}, "
        f"onnxstyle {m['onnxstyle']}; {m['date']}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{res['loadavg_end'][0]:.2f} at end.",
        "",
        "onnxstyle: loss_grad.onnx of the default gatys export through `Engine.loss_grad` on each backend "
        "(targets in fp32 on every side). torch: `reference_loss_and_grad` (eager autograd of the identical loss, "
        "same Caffe weights, layers and pooling). Tübingen × The Starry Night, 4:3. "
        f"`--device auto` runs **{res['auto_label']}** here. Ratios compare figures from this one run.",
        "",
    ]
    return lines


def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    names = cfg["sides"]
    labels = {n: SIDE[n].label for n in names}
    ours = [n for n in names if SIDE[n].kind == "onnxstyle"]
    head, auto = res["headline_px"], res["target_side"]
    pe, su, rss, eff, ceil = res["per_eval"], res["startup"], res["peak_rss"], res["efficiency"], res["ceiling"]
    lines = _header(res)
    lines += ["| figure | " + " | ".join(labels[n] for n in names) + " | target |", "|" + " --- |" * (len(names) + 2)]
    for px in cfg["sizes"]:
        r = pe[str(px)]
        cells = {n: f"{r['median_s'][n] * 1e3:.0f} ms ({r['speedup'][n]:.2f}×)" for n in names if n in r["speedup"]}
        cells["torch"] = f"{r['median_s']['torch'] * 1e3:.0f} ms"
        tgt = ""
        if px == head:
            best = max(ours, key=lambda n: r["speedup"][n])
            v = r["speedup"][best]
            tgt = f"fastest ({labels[best]}) ≥ {TARGETS['per_eval_speedup']:.1f}× torch: {v:.2f}×, {_met(v >= TARGETS['per_eval_speedup'])}"
        lines.append(_row(f"loss + gradient, {r['width']}x{r['height']} (median of {r['repeats']}; × torch)", cells, names, tgt))
    for px in cfg["sizes"]:
        a = pe[str(px)]["agreement"]
        cells = {n: f"{a[n]['grad_rel_l2_diff']:.1e} / {a[n]['grad_cosine']:.6f} / {a[n]['loss_rel_diff']:.1e}" for n in ours}
        lines.append(_row(f"vs torch at {pe[str(px)]['width']}x{pe[str(px)]['height']}: gradient rel. L2 / cosine / loss rel.", cells, names))
    cells = {n: f"{su['median_s'][n]:.2f} s" for n in names}
    v = su["median_s"].get(auto)
    tgt = f"{labels[auto]} ≤ {TARGETS['startup_s']:.1f} s: {_met(v <= TARGETS['startup_s'])}" if v is not None else ""
    lines.append(_row(f"start-up to first gradient, warm caches, {su['width']}x{su['height']} (median of {su['runs']})", cells, names, tgt))
    cells = {n: f"{rss['peak_mb'][n]:.0f} MB" + ("" if n == "torch" else f" ({100 * rss['peak_mb'][n] / rss['peak_mb']['torch']:.0f}%)") for n in names}
    frac = rss["peak_mb"][auto] / rss["peak_mb"]["torch"] if auto in rss["peak_mb"] else None
    tgt = f"{labels[auto]} ≤ {100 * TARGETS['rss_fraction']:.0f}% of torch: {_met(frac <= TARGETS['rss_fraction'])}" if frac is not None else ""
    lines.append(_row(f"peak RSS (VmHWM), {rss['evals']} evaluations at {rss['width']}x{rss['height']}", cells, names, tgt))
    for px in cfg["sizes"]:
        e = eff[str(px)]
        cells = {n: f"{e['gflops'][n]:.0f} GFLOP/s = {100 * e['fraction_of_ceiling'][n]:.0f}%" for n in names}
        tgt = ""
        if px == head and "ort-fp32" in names:
            f = e["fraction_of_ceiling"]["ort-fp32"]
            tgt = f"onnxruntime fp32 ≥ {100 * TARGETS['efficiency']:.0f}% of ceiling: {_met(f >= TARGETS['efficiency'])}"
        lines.append(_row(f"efficiency at {e['width']}x{e['height']} ({e['gflop']:.0f} GFLOP of convs)", cells, names, tgt))
    co, ct = ceil["onnxstyle"]["flops_per_s"] / 1e9, ceil["torch"]["flops_per_s"] / 1e9
    cells = {"ort-fp32": f"{co:.0f} GFLOP/s", "torch": f"{ct:.0f} GFLOP/s (conv2d)"}
    lines.append(_row(f"ceiling: one fp32 3x3 conv {ceil['channels']}→{ceil['channels']} at {ceil['size']}x{ceil['size']} (best of {ceil['repeats']})", cells, names))
    lines += _footer(res, names)
    return "\n".join(lines)


def _footer(res: dict[str, Any], names: list[str]) -> list[str]:
    su, pe = res["startup"], res["per_eval"]
    grouped = [f"{px} px: " + " / ".join("+".join(g) for g in pe[str(px)]["groups"]) for px in res["config"]["sizes"]
               if len(pe[str(px)]["groups"]) > 1]
    lines = [
        "",
        "× torch: torch's median time / the side's (above 1: faster than torch), both from the same alternating rounds. "
        "Agreement: the first gradient of each side against torch's on the same image (content + fixed noise); "
        "bf16 shows its rounding here. Efficiency: the convolution FLOPs of one evaluation (forward convs up to the "
        "deepest layer + the input-gradient convs of the backward) over the median time, as a fraction of the fp32 "
        "onnxruntime ceiling (bf16 can exceed it). Start-up: spawn to the first gradient, after one discarded "
        "process per side (warm file cache, .pyc, optimized-model and OpenVINO compiled-model caches).",
        "",
    ]
    if grouped:
        lines += ["Memory did not allow every side at once; timed in groups (each with torch): " + "; ".join(grouped) + ".", ""]
    lines += [
        "Start-up phases (median, s): "
        + "; ".join(SIDE[n].label + ": " + ", ".join(f"{k} {v:.2f}" for k, v in su["phases_median_s"][n].items()) for n in names)
        + ".",
        "",
        f"Reproduce: `{res['command']}`",
        "",
    ]
    return lines


# ---------------------------------------------------------------- main


def main() -> None:
    from onnxstyle.runtime.providers import physical_cores

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512,1024", help="longest sides in px (4:3 images), comma-separated")
    ap.add_argument("--sides", default=None, help=f"onnxstyle sides to measure (default: all available of {', '.join(SIDE)}); torch always")
    ap.add_argument("--threads", type=int, default=None, help="threads for every side (default: physical cores)")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results (--quick: a temporary folder)")
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
    sides = pick_sides(args.sides)
    # A smoke run never replaces a real measurement unless asked to.
    args.out = args.out or (Path(tempfile.gettempdir()) / "onnxstyle-quick" if args.quick else ROOT / "benchmarks" / "results")

    def say(msg: str) -> None:
        print(msg, flush=True)

    if args.models is not None:
        models = args.models
    else:
        from onnxstyle.autoexport import resolve_models
        from onnxstyle.exportdir import export_settings_for

        models = resolve_models(export_settings_for("gatys"), log=say).folder
    from onnxstyle.exportdir import read_manifest

    spec = read_manifest(models).spec
    info = machine(threads)
    say(f"{info['cpu']}, {threads} threads on every side ({', '.join(s.name for s in sides)}); export {models}")
    t_run = time.perf_counter()

    global PYCACHE
    with tempfile.TemporaryDirectory(prefix="onnxstyle-speed-") as tmp:
        PYCACHE = str(Path(tmp) / "pycache")
        res = measure(args, sizes, threads, sides, models, spec, info, Path(tmp), say)
    res["wall_s"] = time.perf_counter() - t_run
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out / "speed.md").write_text(md)
    say("")
    say(md)
    say(f"wrote {args.out / 'speed.json'} and {args.out / 'speed.md'} ({res['wall_s']:.0f} s)")


def measure(args: argparse.Namespace, sizes: list[int], threads: int, sides: list[Side], models: Path, spec: Any,
            info: dict[str, Any], tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from onnxstyle.exportdir import read_manifest

    quick = args.quick
    names = [s.name for s in sides]
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
    for s in ("onnxstyle", "torch"):
        ceiling[s] = run_ceiling(s, threads, ch, n, ceil_reps)
        say(f"ceiling {s:9s} {ceiling[s]['flops_per_s'] / 1e9:7.1f} GFLOP/s (3x3 conv {ch}->{ch} at {n}x{n})")

    # 1. per gradient evaluation, with each side's agreement with torch
    per: dict[str, Any] = {}
    for px in sizes:
        r = per_eval(models, threads, px, sides, repeats_for(px), warmup_for(px), tmp, say)
        per[str(px)] = r
        say(f"per-eval  {r['width']}x{r['height']}: " + ", ".join(
            f"{k} {r['median_s'][k] * 1e3:.0f} ms" + (f" ({r['speedup'][k]:.2f}x, grad rel {r['agreement'][k]['grad_rel_l2_diff']:.1e}, "
                                                     f"cos {r['agreement'][k]['grad_cosine']:.5f})" if k != "torch" else "")
            for k in names))

    # 2. start-up with warm caches
    su, su_detail = startup(models, threads, sides, startup_px, startup_runs)
    say(f"start-up  {su['width']}x{su['height']}: " + ", ".join(f"{k} {su['median_s'][k]:.2f} s" for k in names)
        + f" (median of {startup_runs})")

    # 3. peak RSS: a fresh process per side.
    rh, rw = rss_px * 3 // 4, rss_px
    rr = {s.name: run_once(s, models, threads, rh, rw, evals=args.rss_evals) for s in sides}
    peak = {
        "height": rh,
        "width": rw,
        "evals": args.rss_evals,
        "peak_mb": {k: rr[k]["peak_rss_mb"] for k in names},
        "after_first_eval_mb": {k: rr[k]["rss_after_first_eval_mb"] for k in names},
    }
    say(f"peak RSS  {rw}x{rh}: " + ", ".join(f"{k} {peak['peak_mb'][k]:.0f} MB" for k in names))

    # 4. efficiency from the per-eval medians, against the onnxruntime fp32 ceiling.
    ceil = ceiling["onnxstyle"]["flops_per_s"]
    eff: dict[str, Any] = {}
    for px in sizes:
        r = per[str(px)]
        fl = conv_flops(spec, r["height"], r["width"])
        rate = {k: fl / r["median_s"][k] for k in names}
        eff[str(px)] = {"height": r["height"], "width": r["width"], "gflop": fl / 1e9,
                        "gflops": {k: v / 1e9 for k, v in rate.items()},
                        "fraction_of_ceiling": {k: v / ceil for k, v in rate.items()}}

    head = 512 if 512 in sizes else max(sizes)
    ours = [k for k in names if SIDE[k].kind == "onnxstyle"]
    auto = auto_side()
    # The start-up and memory targets are the default's: what `--device auto` runs (the
    # fastest side measured if that one was left out with --sides).
    target_side = auto if auto in ours else max(ours, key=lambda k: per[str(head)]["speedup"][k])
    best = max(ours, key=lambda k: per[str(head)]["speedup"][k])
    checks = {
        "per_eval_speedup": per[str(head)]["speedup"][best],
        "startup_s": su["median_s"][target_side],
        "rss_fraction": peak["peak_mb"][target_side] / peak["peak_mb"]["torch"],
    }
    if "ort-fp32" in ours:
        checks["efficiency"] = eff[str(head)]["fraction_of_ceiling"]["ort-fp32"]
    met = {k: (v <= TARGETS[k]) if k in ("rss_fraction", "startup_s") else (v >= TARGETS[k]) for k, v in checks.items()}
    cmd = " ".join(["python benchmarks/speed.py", *sys.argv[1:]])
    return {
        "command": cmd,
        "quick": quick,
        "config": {"sizes": sizes, "sides": names, "threads": threads, "quick": quick, "models": str(models),
                   "export_settings_key": read_manifest(models).data.get("settings_key"), "spec": spec.to_dict()},
        "machine": info,
        "loadavg_end": os.getloadavg(),
        "headline_px": head,
        "auto_side": auto,
        "auto_label": SIDE[auto].label if auto in SIDE else "a GPU backend (not measured here)",
        "target_side": target_side,
        "fastest_side": best,
        "ceiling": ceiling,
        "per_eval": per,
        "startup": su,
        "startup_runs_detail": su_detail,
        "peak_rss": peak,
        "peak_rss_detail": rr,
        "efficiency": eff,
        "targets": TARGETS,
        "ratios": checks,
        "met": met,
    }


if __name__ == "__main__":
    main()
