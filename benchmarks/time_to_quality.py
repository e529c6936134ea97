"""Time to quality: wall time until onnxstyle's image is as good as torch's, per backend.

The bar is what a torch user gets: eager VGG19 + autograd of the identical loss,
torch.optim.LBFGS as the PyTorch tutorial runs it (history 100, lr 1, max_iter 20, no line
search, the image clamped to [0,1] before each evaluation), content init, --ref-evals (300)
evaluations at the size. Its best loss is the bar and the time it took to first reach it
is torch's time. Then each onnxstyle side (backend × precision) runs each strategy and we
record the wall time until its image first reaches the bar.

Losses are comparable only in fp32: a bf16 run's own losses carry its rounding. So each
run's images are re-evaluated with an fp32 onnxruntime engine on the same targets; that
re-evaluation is not counted in the run's time. The callback keeps every image that is a
new best once its own loss is near the bar (own loss × the last measured fp32/own ratio
≤ bar × (1 + --margin)), and every --check-every evaluations evaluates the latest in fp32;
when it is below the bar, a bisection over the kept images finds the first one below it,
and that image's callback timestamp is the run's time.

    python benchmarks/time_to_quality.py --sizes 512        # ~40 min on 2 cores
    python benchmarks/time_to_quality.py                    # 512 and 1024 px, hours: see README
    python benchmarks/time_to_quality.py --quick            # smoke run, a few minutes

Issue 22, the user's view: whole `onnxstyle stylize` processes (old fixed schedule, new default)
against a torch bf16-autocast tutorial script, on five pairs, each image judged by judge.py:

    python benchmarks/time_to_quality.py --processes                   # 512 and 1024 px, all pairs: hours
    python benchmarks/time_to_quality.py --processes --pairs 1 --sizes 512
    python benchmarks/time_to_quality.py --processes --quick --pairs 1 --sizes 160   # smoke

Every side and run is its own subprocess (torch blocked from importing in the onnxstyle
ones), one after the other, with the same threads. Writes
<out>/time_to_quality.{json,md} (rewritten after every run, so a long run's progress is
kept) and <out>/time_to_quality_reference.json (the torch references, for --reuse-reference).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MARK = "@@ttq "
TARGET = 3.0  # torch's time / onnxstyle's time to the bar, at least
STRATEGIES = ("default", "old", "half", "ladder")
# torch.optim.LBFGS as in the PyTorch tutorial (LBFGS([input_img]): every other setting default).
TORCH_LBFGS = {"lr": 1.0, "history_size": 100, "max_iter": 20}


# ---------------------------------------------------------------- shared by the workers


# ../shared/images has them at 1024 px (the package's copies are 512 px: at 1024 they would be
# upsampled, a blurred photo and painting); the package's and the tests' copies otherwise.
SEARCH = (ROOT.parent / "shared" / "images", ROOT / "onnxstyle" / "data", ROOT / "tests" / "data")


def find_image(stem: str) -> Path | None:
    for folder in SEARCH:
        for ext in (".jpg", ".png"):
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def image_paths() -> tuple[Path, Path]:
    content, style = find_image("tubingen"), find_image("starry_night")
    if content is None or style is None:
        raise SystemExit("tubingen / starry_night not found in " + ", ".join(map(str, SEARCH)))
    return content, style


def images(px: int) -> tuple[Any, Any]:
    """Tübingen at ``px`` (longest side) and The Starry Night at full size, RGB float32."""
    from onnxstyle.runtime.image_io import load_image, resize_longest

    content, style = image_paths()
    return resize_longest(load_image(content)[0], px), load_image(style)[0]


def exact_stylizer(models: Path, threads: int) -> Any:
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.settings import EngineConfig

    return Stylizer(models, EngineConfig(device="cpu", precision="fp32", threads=threads))


def exact_targets(st: Any, content: Any, style: Any, px: int) -> dict[str, Any]:
    """The final stage's targets exactly as Stylizer feeds them (fp32 features, all-ones guide,
    temporal term off), from the onnxruntime fp32 engine."""
    import numpy as np

    from onnxstyle.runtime.engine import no_temporal
    from onnxstyle.runtime.settings import RunSettings

    eng = st.engine
    t = st.targets(content, [style], RunSettings(size=px), regions=1 if eng.guided else 0)
    h, w = content.shape[:2]
    if eng.guided:
        t["guide"] = np.ones((1, 1, h, w), np.float32)
    if eng.temporal:
        t.update(no_temporal(h, w))
    return t


def strategy_settings(name: str, px: int, final_evals: int) -> Any:
    """The stages of a strategy, as RunSettings with the last stage's budget set to
    ``final_evals`` (a run is stopped at the bar; the budget only has to be large enough).

    default: what ``RunSettings(size=px)`` plans (the √2 pyramid, stop rule on); old: the fixed
    schedule of before (one stage up to 512 px, half size first above); half: half size for 150 evaluations, then full size; ladder: a √2 ladder,
    half → half·√2 → full, 100 evaluations on each coarse rung.
    """
    from onnxstyle.runtime.settings import RunSettings

    base = RunSettings(size=px)
    if name == "default":  # the pyramid with its stop rule and carried memory, as the user gets it
        return base.replace(pyramid_final_iterations=final_evals)
    if name == "old":
        stages = base.replace(iterations=300).stages()
    elif name == "half":
        stages = [(px // 2, 150), (px, 0)]
    elif name == "ladder":
        stages = [(px // 2, 100), (round(px / math.sqrt(2)), 100), (px, 0)]
    else:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return base.replace(scales=tuple(s for s, _ in stages), scale_iterations=(*(n for _, n in stages[:-1]), final_evals))


# ---------------------------------------------------------------- the torch reference (a worker)


class _Done(Exception):
    pass


def reference_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from onnxstyle.exportdir import read_manifest
    from onnxstyle.reference.vgg import VGG19, reference_loss_and_grad
    from onnxstyle.reference.weights import load_caffe, load_weights

    torch.set_num_threads(cfg["threads"])
    models, px, n = Path(cfg["models"]), cfg["px"], cfg["ref_evals"]
    content, style = images(px)
    # The onnxruntime engine that computed them is dropped before torch's clock starts.
    targets = exact_targets(exact_stylizer(models, cfg["threads"]), content, style, px)
    gc.collect()
    manifest = read_manifest(models)
    source = manifest.data["weights"]["requested"]
    spec = manifest.spec
    model = VGG19(load_caffe() if source == "caffe" else load_weights(source), last=spec.deepest, pooling=spec.pooling).eval()
    tt = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in targets.items()}
    from onnxstyle.runtime.image_io import to_nchw

    x = torch.from_numpy(to_nchw(content).copy()).requires_grad_(True)
    opt = torch.optim.LBFGS([x], **TORCH_LBFGS)
    losses: list[float] = []
    stamps: list[float] = []
    t0 = time.perf_counter()

    def closure() -> torch.Tensor:
        if len(losses) >= n:
            raise _Done
        with torch.no_grad():
            x.clamp_(0, 1)
        loss, g, _ = reference_loss_and_grad(model, spec, x.detach(), tt)
        losses.append(loss)
        stamps.append(time.perf_counter() - t0)
        x.grad = g
        return torch.tensor(loss)

    try:
        while True:
            opt.step(closure)
    except _Done:
        pass
    best = int(np.argmin(losses))
    return {"px": px, "height": content.shape[0], "width": content.shape[1], "ref_evals": n, "bar": losses[best],
            "evaluation_at_bar": best + 1, "time_to_bar_s": stamps[best], "time_all_s": stamps[-1],
            "losses": losses, "times_s": stamps, "torch": torch.__version__, "threads": cfg["threads"],
            "settings": TORCH_LBFGS}


# ---------------------------------------------------------------- an onnxstyle run (a worker)


class Stop(KeyboardInterrupt):
    """Raised from the callback to end a run (a KeyboardInterrupt: the runtime's way to stop)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class BarWatch:
    """The run's callback: timestamps every evaluation (net of the fp32 checks), keeps the
    candidate images near the bar, checks them in fp32, stops the run at the bar or at the cap."""

    KEEP = 32  # candidate images kept between two checks (thinned to every other beyond)

    def __init__(self, bar: float, exact_loss: Callable[[Any], float], every: int, margin: float, cap_s: float | None) -> None:
        self.bar, self.exact_loss, self.every, self.margin, self.cap_s = bar, exact_loss, every, margin, cap_s
        self.t0 = time.perf_counter()
        self.paused = 0.0
        self.ratio = 1.0  # fp32 loss / own loss, as last measured
        self.pending: list[tuple[int, float, float, Any]] = []  # (step, net time, own loss, image)
        self.last_check = 0
        self.checks: list[dict[str, float]] = []
        self.trace: list[tuple[int, float, float, int]] = []  # (step, net time, own loss, stage)
        self.reached: dict[str, float] | None = None
        self.switches: list[int] = []  # evaluations at which a stage went on in fp32
        self.step = 0  # the last evaluation seen (run-wide)

    def net(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def step_now(self) -> int:
        return self.step

    def __call__(self, it: Any) -> None:
        t = self.net()
        self.trace.append((it.step, t, it.loss, it.stage))
        self.step = it.step
        if self.cap_s is not None and t > self.cap_s:
            raise Stop("cap")
        if it.stage != it.stages:  # only the output size is comparable with the bar
            return
        if it.loss <= it.best_loss and it.loss * self.ratio <= self.bar * (1 + self.margin):
            self.pending.append((it.step, t, it.loss, it.image.copy()))
            if len(self.pending) > self.KEEP:
                self.pending = self.pending[::-2][::-1]  # every other one, the latest kept
        if self.pending and it.step - self.last_check >= self.every:
            self.last_check = it.step
            if self.check():
                raise Stop("reached")

    def _exact(self, i: int, cache: dict[int, float]) -> float:
        if i not in cache:
            step, t, own, img = self.pending[i]
            cache[i] = self.exact_loss(img)
            self.checks.append({"step": step, "t": t, "own": own, "fp32": cache[i]})
        return cache[i]

    def check(self) -> bool:
        """The latest candidate in fp32; below the bar: the first candidate below it. Not timed."""
        t = time.perf_counter()
        try:
            cache: dict[int, float] = {}
            last = len(self.pending) - 1
            f = self._exact(last, cache)
            self.ratio = f / self.pending[last][2]
            print(f"  evaluation {self.pending[last][0]}: fp32 loss {f:.5g} (own {self.pending[last][2]:.5g}), bar {self.bar:.5g}",
                  file=sys.stderr, flush=True)
            if f > self.bar:
                self.pending.clear()
                return False
            lo, hi = 0, last  # bisection, taking the fp32 loss of the kept bests as decreasing
            while lo < hi:
                mid = (lo + hi) // 2
                if self._exact(mid, cache) <= self.bar:
                    hi = mid
                else:
                    lo = mid + 1
            step, tn, own, _ = self.pending[hi]
            self.reached = {"step": step, "t": tn, "own": own, "fp32": cache[hi]}
            return True
        finally:
            self.paused += time.perf_counter() - t


@contextmanager
def record_switches(step: Callable[[], int], into: list[int]) -> Iterator[None]:
    """Note the run-wide evaluation at which each stage of a bf16 run goes on in fp32.

    Result.precision_switch has the first one, but only when the run returns; these runs are
    stopped from the callback, and a coarse-to-fine run may switch in several stages. So the
    runtime's switch (PrecisionFallback.upgrade) is wrapped for the duration of the run.
    """
    from onnxstyle.runtime import api

    original = api.PrecisionFallback.upgrade

    def upgrade(self: Any) -> bool:
        done = original(self)
        if done:
            into.append(step())
        return done

    api.PrecisionFallback.upgrade = upgrade  # type: ignore[method-assign]
    try:
        yield
    finally:
        api.PrecisionFallback.upgrade = original  # type: ignore[method-assign]


def run_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    from onnxstyle.exportdir import FEATURES, LOSS_GRAD
    from onnxstyle.errors import Interrupted
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.image_io import resize_longest
    from onnxstyle.runtime.settings import EngineConfig, RunSettings

    models, px, threads = Path(cfg["models"]), cfg["px"], cfg["threads"]
    content, style = images(px)
    checker = exact_stylizer(models, threads)
    targets = exact_targets(checker, content, style, px)
    checker.engine.release(FEATURES)

    def exact_loss(img: Any) -> float:
        loss = float(checker.engine.loss_grad(img, targets).loss)
        # Its session (and arena) goes between checks: the run's memory plan (tiling at
        # 1024 px and up is decided from what is available) must not see the checker.
        checker.engine.release(LOSS_GRAD)
        return loss

    st = Stylizer(models, EngineConfig(device=cfg["device"], precision=cfg["precision"], threads=threads))
    # Warm: sessions built (OpenVINO: compiled or loaded from its cache) before the clock starts,
    # as torch's model is built before its clock starts.
    st.run(resize_longest(content, 64), [style], RunSettings(size=64, iterations=3))
    settings = strategy_settings(cfg["strategy"], px, cfg["final_evals"])
    plan = st.plan(content.shape[:2], settings)
    watch = BarWatch(cfg["bar"], exact_loss, cfg["check_every"], cfg["margin"], cfg["cap_s"])
    why = "budget"
    try:
        with record_switches(watch.step_now, watch.switches):
            st.run(content, [style], settings, callback=watch)
        if watch.pending and watch.reached is None and watch.check():
            why = "reached"
    except Interrupted as e:
        if not isinstance(e.cause, Stop):
            raise
        why = e.cause.why
    return {
        "side": cfg["side"], "strategy": cfg["strategy"], "provider": st.engine.provider,
        "stages": [[s.size, s.evaluations] for s in plan.stages],
        "plan": [{"size": s.size, "hw": [s.height, s.width], "tiled": s.tiled, "optimizer": s.optimizer, "history": s.history}
                 for s in plan.stages],
        "reached": watch.reached is not None, "why": why,
        "wall_s": watch.reached["t"] if watch.reached else watch.net(),
        "evaluations": watch.reached["step"] if watch.reached else (watch.trace[-1][0] if watch.trace else 0),
        "fp32_loss_at_reach": watch.reached["fp32"] if watch.reached else None,
        "best_fp32_checked": min((c["fp32"] for c in watch.checks), default=None),
        "precision_switches": watch.switches,
        "checks": watch.checks, "check_s": watch.paused, "trace": watch.trace,
    }


# ---------------------------------------------------------------- whole processes (issue 22)
#
# `--processes`: the user's view. Each strategy is one whole process, timed from spawn to exit:
# `onnxstyle stylize C S -o out.png` with the old fixed schedule (--iterations 300), with the new
# default (no --iterations: the pyramid with the stop rule), and a torch script running the
# PyTorch tutorial's L-BFGS for 300 evaluations under bf16 autocast (fp32 eager with
# --torch-fp32, or where the CPU has no native bf16). Every image is then judged alike by
# benchmarks/judge.py: fp32 loss on onnxruntime, sliced-Wasserstein distance of VGG features.

PAIRS = (  # (content, style): the gallery's three (docs/gallery), then two more
    ("tubingen", "starry_night"), ("tubingen", "the_scream"), ("tubingen", "shipwreck"),
    ("hoovertowernight", "starry_night"), ("hoovertowernight", "shipwreck"),
)
PROCESS_STRATEGIES = ("old", "new", "torch-bf16")
GOALS = {512: 1 / 3, 1024: 1 / 4}  # new default's wall time / torch bf16's, at most
PROGRESS = re.compile(r"stylizing (\d+)/(\d+) .*?(?:stage (\d+)/(\d+) )?[\d.]+ eval/s .* loss ([-+0-9.eEinfa]+)")
TORCH_MARK = "@@ev "


def native_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def torch_process_main(cfg: dict[str, Any]) -> None:
    """The torch contestant as a user's script: load, build VGG19, targets, then
    torch.optim.LBFGS (the tutorial's settings) for ``evals`` evaluations; bf16 autocast where
    the CPU has it. Prints one TORCH_MARK line per evaluation (its loss) on stderr."""
    import numpy as np
    import torch

    from onnxstyle.exportdir import read_manifest
    from onnxstyle.reference.vgg import VGG19, reference_features, reference_loss
    from onnxstyle.reference.weights import load_caffe, load_weights
    from onnxstyle.runtime.image_io import load_image, resize_longest, save_image, to_nchw

    torch.set_num_threads(cfg["threads"])
    manifest = read_manifest(Path(cfg["models"]))
    spec, source = manifest.spec, manifest.data["weights"]["requested"]
    model = VGG19(load_caffe() if source == "caffe" else load_weights(source), last=spec.deepest, pooling=spec.pooling).eval()
    content = resize_longest(load_image(cfg["content"])[0], cfg["px"])
    style = resize_longest(load_image(cfg["style"])[0], cfg["px"])
    h, w = content.shape[:2]
    with torch.no_grad():  # targets in fp32, as onnxstyle makes them
        targets = {k: v for k, v in reference_features(model, spec, torch.from_numpy(to_nchw(content))).items() if k.startswith("content_")}
        targets.update({k: v for k, v in reference_features(model, spec, torch.from_numpy(to_nchw(style))).items() if k.startswith("gram_")})
    if spec.guided:
        targets["guide"] = torch.ones((1, 1, h, w))
    if spec.temporal:
        targets["temporal_target"], targets["temporal_map"] = torch.zeros((1, 3, h, w)), torch.zeros((1, 1, h, w))
    x = torch.from_numpy(to_nchw(content).copy()).requires_grad_(True)
    opt = torch.optim.LBFGS([x], **TORCH_LBFGS)
    bf16 = cfg["precision"] == "bf16"
    n = {"evals": 0}

    def closure() -> torch.Tensor:
        if n["evals"] >= cfg["evals"]:
            raise _Done
        with torch.no_grad():
            x.clamp_(0, 1)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = reference_loss(model, spec, x, targets)
        loss = loss.float()
        loss.backward()
        n["evals"] += 1
        print(f"{TORCH_MARK}{n['evals']} {loss.item():.8g}", file=sys.stderr, flush=True)
        return loss

    try:
        while True:
            opt.step(closure)
    except _Done:
        pass
    with torch.no_grad():
        x.clamp_(0, 1)
    save_image(cfg["output"], np.ascontiguousarray(x.detach()[0].permute(1, 2, 0).numpy()))


def _onnxstyle_argv() -> list[str]:
    exe = Path(sys.executable).with_name("onnxstyle")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from onnxstyle.cli import main; sys.argv[0] = 'onnxstyle'; main()"]


def process_command(strategy: str, content: Path, style: Path, out: Path, px: int, models: Path, threads: int) -> list[str]:
    """The command line a user types, for each strategy (the torch one: this script's worker)."""
    if strategy.startswith("torch"):
        cfg = {"content": str(content), "style": str(style), "output": str(out), "px": px, "models": str(models),
               "threads": threads, "evals": 300, "precision": "bf16" if strategy == "torch-bf16" else "fp32"}
        return [sys.executable, str(Path(__file__).resolve()), "--torch-process", json.dumps(cfg)]
    cmd = [*_onnxstyle_argv(), "stylize", str(content), str(style), "-o", str(out), "--size", str(px),
           "--models", str(models), "--threads", str(threads)]
    # old: the default before issue 22, one 300-evaluation stage and the monotone step rule.
    return cmd + (["--iterations", "300", "--lbfgs-step", "armijo"] if strategy == "old" else [])


def warm_command(strategy: str, cmd: list[str], px: int) -> list[str] | None:
    """An untimed run compiling the same shapes (OpenVINO's cache), as a user's second run
    finds them; one evaluation per stage. None for torch (nothing to compile)."""
    from onnxstyle.runtime.settings import pyramid_sizes

    if strategy.startswith("torch"):
        return None
    if strategy == "old":
        i = cmd.index("--iterations")
        return [*cmd[:i + 1], "1", *cmd[i + 2:]]
    sizes = pyramid_sizes(px)
    return [*cmd, "--scales", ",".join(map(str, sizes)), "--scale-iterations", ",".join("1" for _ in sizes)]


def timed_process(cmd: list[str], threads: int) -> dict[str, Any]:
    """Run ``cmd``, timing it from spawn to exit; its progress lines, timestamped as they come,
    give the loss curve: (seconds, evaluation, stage, stages, own loss)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), ONNXSTYLE_PROGRESS_INTERVAL="0")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    trace: list[tuple[float, int, int, int, float]] = []
    tail: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        t = time.perf_counter() - t0
        if line.startswith(TORCH_MARK):
            step, loss = line[len(TORCH_MARK):].split()
            trace.append((t, int(step), 1, 1, float(loss)))
        elif m := PROGRESS.search(line):
            trace.append((t, int(m[1]), int(m[3] or 1), int(m[4] or 1), float(m[5])))
        else:
            tail = (tail + [line.rstrip()])[-20:]
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} … failed ({rc}):\n" + "\n".join(tail))
    return {"wall_s": wall, "evaluations": trace[-1][1] if trace else 0, "trace": trace}


def prepared(pair: tuple[str, str], px: int, work: Path) -> tuple[Path | None, Path | None]:
    """Content and style at ``px`` (longest side) as PNGs, what every process and the judge
    read: each then resizes nothing, so no two decoders or resizers see different pixels
    (the CLI may decode a JPEG reduced, from its header, before its own resize)."""
    from onnxstyle.runtime.image_io import load_image, resize_longest, save_image

    found = [find_image(stem) for stem in pair]
    if None in found:
        return None, None
    out = []
    for stem, path in zip(pair, found):
        dest = work / f"input-{stem}-{px}.png"
        if not dest.is_file():
            save_image(dest, resize_longest(load_image(path)[0], px))
        out.append(dest)
    return out[0], out[1]


def run_pair(px: int, pair: tuple[str, str], strategies: list[str], models: Path, threads: int, work: Path,
             say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every strategy on one pair at one size, one after the other; each image judged."""
    from judge import judge

    from onnxstyle.runtime.image_io import load_image

    content, style = prepared(pair, px, work)
    if content is None or style is None:
        say(f"  {pair[0]} × {pair[1]}: image not found, skipped")
        return []
    rows = []
    for strategy in strategies:
        out = work / f"{pair[0]}-{pair[1]}-{px}-{strategy}.png"
        cmd = process_command(strategy, content, style, out, px, models, threads)
        warm = warm_command(strategy, cmd, px)
        if warm is not None:
            timed_process(warm, threads)
        row = {"pair": list(pair), "strategy": strategy, **timed_process(cmd, threads)}
        image = load_image(out)[0]
        row["judge"] = judge(image, load_image(content)[0], load_image(style)[0], models, threads)
        row["image"] = str(out)
        say(f"  {px} px {pair[0]} × {pair[1]} {strategy:10s}: {row['wall_s']:.1f} s, {row['evaluations']} evaluations, "
            f"fp32 loss {row['judge']['fp32_loss']:.5g}, SWD {row['judge']['swd_mean']:.4g}")
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], px: int) -> dict[str, Any]:
    """Per pair: new vs torch (wall ratio against the goal, judged no worse) and new vs old
    (no more wall time, fp32 loss no higher)."""
    out: dict[str, Any] = {}
    by = {(tuple(r["pair"]), r["strategy"]): r for r in rows}
    torch_name = next((s for s in ("torch-bf16", "torch-fp32") if any(k[1] == s for k in by)), None)
    for pair in dict.fromkeys(tuple(r["pair"]) for r in rows):
        new, old, ref = by.get((pair, "new")), by.get((pair, "old")), by.get((pair, torch_name)) if torch_name else None
        entry: dict[str, Any] = {}
        if new and ref:
            ratio = new["wall_s"] / ref["wall_s"]
            no_worse = new["judge"]["swd_mean"] <= ref["judge"]["swd_mean"] and new["judge"]["fp32_loss"] <= ref["judge"]["fp32_loss"]
            entry["vs_torch"] = {"torch": torch_name, "wall_ratio": ratio, "goal": GOALS.get(px), "no_worse": no_worse,
                                 "met": no_worse and ratio <= GOALS.get(px, 1 / 3)}
        if new and old:
            entry["vs_old"] = {"wall_ratio": new["wall_s"] / old["wall_s"],
                               "loss_ratio": new["judge"]["fp32_loss"] / old["judge"]["fp32_loss"],
                               "met": new["wall_s"] <= old["wall_s"] and new["judge"]["fp32_loss"] <= old["judge"]["fp32_loss"]}
        out["×".join(pair)] = entry
    return out


def process_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Time to a finished image: whole processes (issue 22)", ""]
    if res["quick"]:
        lines += ["**Smoke run: tiny sizes, the figures mean nothing.**", ""]
    load = max(m["loadavg_start"][0], res.get("loadavg_end", [0])[0])
    # Each process under test keeps ``threads`` cores busy itself: more than that is other work.
    if load > m["threads"] + 0.5:
        lines += [f"**The machine was busy (load average up to {load:.1f}, {m['threads']} of it this run's): times are unreliable.**", ""]
    else:
        lines += [f"Load average up to {load:.1f}, this run's own {m['threads']} threads included.", ""]
    lines += [
        f"{m['cpu']}, {m['threads']} threads; {m['date']}; native bf16: {'yes' if res['native_bf16'] else 'no'}.",
        "",
        "Each row is one process, timed from spawn to exit (imports, model, targets, optimization, writing the PNG); the "
        "onnxstyle ones after one untimed run that compiles the same shapes (a user's second run). `old`: `onnxstyle "
        "stylize C S -o out.png --iterations 300 --lbfgs-step armijo` (the default of before: one fixed stage, the "
        "monotone step rule); `new`: `onnxstyle stylize C S -o out.png` (the default: the √2 pyramid, the stop rule, "
        "torch-like unit steps); `torch-bf16`: torch.optim.LBFGS as the PyTorch tutorial runs it, 300 "
        "evaluations, the loss under `torch.autocast('cpu', dtype=torch.bfloat16)`. Judge (benchmarks/judge.py): the "
        "fp32 loss on onnxruntime, and the sliced-Wasserstein distance of VGG features to the style (mean over style "
        "layers, each relative to the style's spread); lower is better.",
        "",
    ]
    for px, e in res["sizes"].items():
        lines += [f"## {px} px", "", "| pair | strategy | wall | evaluations | fp32 loss | SWD |", "| --- | --- | --- | --- | --- | --- |"]
        for r in e["rows"]:
            j = r["judge"]
            lines.append(f"| {' × '.join(r['pair'])} | {r['strategy']} | {r['wall_s']:.1f} s | {r['evaluations']} | {j['fp32_loss']:.5g} | {j['swd_mean']:.4g} |")
        lines += ["", "| pair | new / torch wall (goal) | judged no worse than torch | new / old wall | new / old fp32 loss | new ≤ old on both |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for pair, s in e["summary"].items():
            vt, vo = s.get("vs_torch"), s.get("vs_old")
            a = f"{vt['wall_ratio']:.3f} (≤ {vt['goal'] or 1 / 3:.3f}): {'met' if vt['met'] else '**not met**'}" if vt else "—"
            b = ("yes" if vt["no_worse"] else "**no**") if vt else "—"
            c = f"{vo['wall_ratio']:.3f}" if vo else "—"
            d = f"{vo['loss_ratio']:.4f}" if vo else "—"
            f = ("yes" if vo["met"] else "**no**") if vo else "—"
            lines.append(f"| {pair} | {a} | {b} | {c} | {d} | {f} |")
        lines.append("")
    lines += [f"Plot: `{res.get('plot') or 'not written (no matplotlib)'}`.", "", f"Reproduce: `{res['command']}`", ""]
    return "\n".join(lines)


def plot_processes(res: dict[str, Any], path: Path) -> str | None:
    """Loss against process seconds per strategy, a panel per size × pair: each process's own loss
    at its output-size stage (bf16 for onnxstyle and torch-bf16: their own rounding), and its
    judged fp32 loss as a marker at its exit."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = list(res["sizes"])
    pairs = sorted({tuple(r["pair"]) for e in res["sizes"].values() for r in e["rows"]})
    if not pairs:
        return None
    # Only the panels that have runs: results made in parts need not hold every size × pair.
    panels = [(px, pair) for px in sizes for pair in pairs if any(tuple(r["pair"]) == pair for r in res["sizes"][px]["rows"])]
    cols = min(len(panels), len(pairs))
    rows = -(-len(panels) // cols)  # ceiling division
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colours = {"old": "tab:blue", "new": "tab:green", "torch-bf16": "tab:red", "torch-fp32": "tab:orange"}
    for ax, (px, pair) in zip(axes.flat, panels):
        for r in (r for r in res["sizes"][px]["rows"] if tuple(r["pair"]) == pair):
            pts = [(t, loss) for t, _, stage, stages, loss in r["trace"] if stage == stages]
            c = colours.get(r["strategy"], "black")
            if pts:
                ax.plot(*zip(*pts), color=c, lw=1, label=r["strategy"])
            ax.plot([r["wall_s"]], [r["judge"]["fp32_loss"]], "o", color=c, ms=5)
        ax.set_yscale("log")
        ax.set_title(f"{px} px: {' × '.join(pair)}", fontsize=9)
        ax.set_xlabel("seconds since the process started")
        ax.set_ylabel("loss (line: own; dot: fp32 judge)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.relpath(path, ROOT)


def processes_main(args: argparse.Namespace, models: Path, threads: int, say: Callable[[str], None]) -> None:
    from onnxstyle.runtime.providers import cpu_model

    sizes = [int(s) for s in (args.sizes or ("96" if args.quick else "512,1024")).split(",") if s.strip()]
    pairs = list(PAIRS[: args.pairs] if args.pairs else PAIRS)
    if args.pair_names:
        pairs = [tuple(p.split(":")) for p in args.pair_names.split(",")]  # type: ignore[misc]
    strategies = [s.strip() for s in (args.process_strategies or ",".join(PROCESS_STRATEGIES)).split(",") if s.strip()]
    if not native_bf16() or args.torch_fp32:
        strategies = [("torch-fp32" if s == "torch-bf16" else s) for s in strategies]
    work = args.out / "time_to_quality_images"
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "command": " ".join(["python benchmarks/time_to_quality.py", *sys.argv[1:]]), "quick": args.quick, "native_bf16": native_bf16(),
        "machine": {"cpu": cpu_model(), "threads": threads, "loadavg_start": os.getloadavg(),
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "strategies": strategies, "sizes": {},
    }
    plot = args.plot or (args.out if args.quick else ROOT / "docs") / "time_to_quality_processes.png"
    kept = args.out / "time_to_quality_processes.json"
    if args.append and kept.is_file():
        # Another invocation's rows (other pairs or strategies) stay, the same machine's.
        old = json.loads(kept.read_text())
        res["sizes"], res["command"] = old["sizes"], f"{old['command']}; then {res['command']}"
        res["machine"]["loadavg_start"] = old["machine"]["loadavg_start"]
    for px in sizes:
        entry = res["sizes"].setdefault(str(px), {"rows": [], "summary": {}})
        for pair in pairs:
            entry["rows"] += run_pair(px, pair, strategies, models, threads, work, say)
            entry["summary"] = summarize(entry["rows"], px)
            res["loadavg_end"] = os.getloadavg()
            (args.out / "time_to_quality_processes.json").write_text(json.dumps(res, indent=1) + "\n")
    res["plot"] = plot_processes(res, plot)
    (args.out / "time_to_quality_processes.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "time_to_quality_processes.md").write_text(process_markdown(res))
    print((args.out / "time_to_quality_processes.md").read_text())


# ---------------------------------------------------------------- orchestration


def spawn(cfg: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run one worker (this script with --worker) and return its result; its stderr is ours."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                          stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{cfg['role']} worker failed ({proc.returncode}); its messages are above")
    return json.loads(lines[-1][len(MARK) :])


def worker_main(cfg: dict[str, Any]) -> None:
    if cfg["role"] == "run":
        sys.modules["torch"] = None  # the runtime must not need torch
        res = run_worker(cfg)
        if sys.modules.get("torch") is not None:
            raise RuntimeError("the onnxstyle runtime imported torch")
    else:
        res = reference_worker(cfg)
    sys.stdout.write(MARK + json.dumps(res) + "\n")


def reference_key(px: int, args: argparse.Namespace, threads: int, models: Path) -> dict[str, Any]:
    from importlib import metadata

    from onnxstyle.exportdir import read_manifest
    from onnxstyle.runtime.providers import cpu_model

    return {"px": px, "ref_evals": args.ref_evals, "threads": threads, "cpu": cpu_model(), "torch": metadata.version("torch"),
            "export": read_manifest(models).data.get("settings_key"), "settings": TORCH_LBFGS,
            "images": [str(p) for p in image_paths()]}


def get_reference(px: int, args: argparse.Namespace, threads: int, models: Path, say: Callable[[str], None]) -> dict[str, Any]:
    key = reference_key(px, args, threads, models)
    cache = args.out / "time_to_quality_reference.json"
    stored = json.loads(cache.read_text()) if cache.is_file() else []
    if args.reuse_reference:
        for ref in stored:
            if ref.get("key") == key:
                say(f"{px} px: torch reference reused from {cache} ({ref['date']})")
                return {**ref, "reused": True}
    say(f"{px} px: torch reference, {args.ref_evals} evaluations ...")
    ref = spawn({"role": "reference", "models": str(models), "px": px, "ref_evals": args.ref_evals, "threads": threads}, threads)
    ref.update(key=key, date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), reused=False)
    stored = [r for r in stored if r.get("key") != key] + [ref]
    args.out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(stored) + "\n")
    return ref


def matrix(sides: list[Any], strategies: list[str], auto: str | None, all_strategies: bool, px: int) -> list[tuple[Any, str]]:
    """Every side with the default strategy; the other strategies with the side --device auto
    runs (or every side with --all-strategies). A strategy planning the same stages as one
    already listed for the side is left out (at 1024 px, default = half)."""
    out: list[tuple[Any, str]] = []
    for s in sides:
        seen: set[tuple[tuple[int, int], ...]] = set()
        for name in strategies:
            if name != "default" and not all_strategies and s.name != auto and "default" in strategies:
                continue
            stages = tuple(strategy_settings(name, px, 1).stages())
            if stages not in seen:
                seen.add(stages)
                out.append((s, name))
    return out


def main() -> None:
    from speed import SIDE, auto_side, pick_sides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="longest sides, comma-separated (default 512,1024)")
    ap.add_argument("--sides", default=None, help=f"onnxstyle sides (default: all available of {', '.join(n for n in SIDE if n != 'torch')})")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help=f"of {', '.join(STRATEGIES)} (default: all)")
    ap.add_argument("--all-strategies", action="store_true", help="every strategy on every side (default: the extra ones on the auto side only)")
    ap.add_argument("--ref-evals", type=int, default=None, help="torch evaluations that set the bar (default 300)")
    ap.add_argument("--budget-factor", type=float, default=2.0, help="last stage's evaluation budget, × --ref-evals")
    ap.add_argument("--cap", type=float, default=1.0, help="stop a run at this × torch's time (not reached)")
    ap.add_argument("--check-every", type=int, default=None, help="evaluations between fp32 checks near the bar (default 10)")
    ap.add_argument("--margin", type=float, default=0.05, help="keep candidates from own loss ≤ bar × (1 + margin)")
    ap.add_argument("--reuse-reference", action="store_true", help="reuse a stored torch reference with the same key")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results (--quick: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 px, 20 reference evaluations")
    ap.add_argument("--processes", action="store_true",
                    help="issue 22: old default, new default and torch bf16 autocast as whole processes on the pairs, judged alike")
    ap.add_argument("--pairs", type=int, default=None, help="--processes: the first N pairs only (default: all five)")
    ap.add_argument("--pair-names", default=None, help="--processes: content:style pairs by file stem, comma-separated")
    ap.add_argument("--append", action="store_true", help="--processes: add to the results already written, not replace them")
    ap.add_argument("--process-strategies", default=None, help=f"--processes: of {', '.join(PROCESS_STRATEGIES)}, torch-fp32")
    ap.add_argument("--plot", type=Path, default=None,
                    help="--processes: where the curves go (default docs/time_to_quality_processes.png); another machine's results get their own")
    ap.add_argument("--torch-fp32", action="store_true", help="--processes: torch in fp32 eager instead of bf16 autocast")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch-process", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        return worker_main(json.loads(args.worker))
    if args.torch_process is not None:
        return torch_process_main(json.loads(args.torch_process))

    from onnxstyle.runtime.providers import cpu_model, physical_cores

    sizes = [int(s) for s in (args.sizes or ("64" if args.quick else "512,1024")).split(",") if s.strip()]
    args.ref_evals = args.ref_evals or (20 if args.quick else 300)
    check_every = args.check_every or (2 if args.quick else 10)
    args.out = args.out or (Path(tempfile.gettempdir()) / "onnxstyle-quick" if args.quick else ROOT / "benchmarks" / "results")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for s in strategies:
        strategy_settings(s, 512, 1)  # an unknown name fails here, before any run
    threads = args.threads or physical_cores()
    sides = [s for s in pick_sides(args.sides) if s.kind == "onnxstyle"]
    auto = auto_side()

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.models is not None:
        models = args.models
    else:
        from onnxstyle.autoexport import resolve_models
        from onnxstyle.exportdir import export_settings_for

        models = resolve_models(export_settings_for("gatys"), log=say).folder
    if args.processes:
        args.out.mkdir(parents=True, exist_ok=True)
        return processes_main(args, models, threads, say)
    res: dict[str, Any] = {
        "command": " ".join(["python benchmarks/time_to_quality.py", *sys.argv[1:]]), "quick": args.quick,
        "machine": {"cpu": cpu_model(), "threads": threads, "loadavg_start": os.getloadavg(),
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "images": [str(p) for p in image_paths()], "auto_side": auto, "target": TARGET, "cap": args.cap, "check_every": check_every, "margin": args.margin,
        "sizes": {},
    }
    t_all = time.perf_counter()
    for px in sizes:
        ref = get_reference(px, args, threads, models, say)
        say(f"{px} px: bar {ref['bar']:.5g} reached by torch at evaluation {ref['evaluation_at_bar']} after {ref['time_to_bar_s']:.1f} s")
        entry = res["sizes"][str(px)] = {"reference": ref, "rows": []}
        for side, strategy in matrix(sides, strategies, auto, args.all_strategies, px):
            cfg = {"role": "run", "models": str(models), "px": px, "threads": threads, "side": side.name,
                   "device": side.device, "precision": side.precision, "strategy": strategy, "bar": ref["bar"],
                   "final_evals": int(args.budget_factor * args.ref_evals), "check_every": check_every,
                   "margin": args.margin, "cap_s": args.cap * ref["time_to_bar_s"]}
            row = spawn(cfg, threads)
            row["speedup"] = ref["time_to_bar_s"] / row["wall_s"] if row["reached"] else None
            entry["rows"].append(row)
            say(f"{px} px {side.name:8s} {strategy:7s}: " + (
                f"reached at evaluation {row['evaluations']} after {row['wall_s']:.1f} s, {row['speedup']:.2f}x torch"
                if row["reached"] else f"not reached ({row['why']}) after {row['wall_s']:.1f} s")
                + (f"; fp32 from evaluation(s) {row['precision_switches']}" if row["precision_switches"] else ""))
            write(res, args.out, time.perf_counter() - t_all)
    write(res, args.out, time.perf_counter() - t_all)
    print((args.out / "time_to_quality.md").read_text())
    say(f"wrote {args.out / 'time_to_quality.json'} and .md ({time.perf_counter() - t_all:.0f} s)")


# ---------------------------------------------------------------- report


def write(res: dict[str, Any], out: Path, wall: float) -> None:
    res["wall_s"] = wall
    res["loadavg_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_quality.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "time_to_quality.md").write_text(markdown(res))


def markdown(res: dict[str, Any]) -> str:
    from speed import SIDE

    m = res["machine"]
    lines = ["# Time to quality: onnxstyle backends vs torch.optim.LBFGS (Tübingen × The Starry Night, gatys loss)", ""]
    images_used = ", ".join(os.path.relpath(p, ROOT) for p in res["images"])
    if res["quick"]:
        lines += ["**Quick smoke run (`--quick`): tiny size and too few evaluations to mean anything.**", ""]
    load = max(m["loadavg_start"][0], res["loadavg_end"][0])
    if load > 0.5 * m["threads"]:
        lines += [f"**The machine was busy (load average up to {load:.1f}, this run included): times are unreliable.**", ""]
    lines += [
        f"{m['cpu']}, {m['threads']} threads everywhere; {m['date']}; images {images_used}. `--device auto` runs "
        f"{SIDE[res['auto_side']].label if res['auto_side'] in SIDE else 'a GPU backend'} here.",
        "",
        "Bar: the best loss torch.optim.LBFGS (history 100, lr 1, max_iter 20, no line search, clamped to [0,1]; "
        "the PyTorch tutorial's settings) reaches in the reference evaluations of torch eager autograd, content init; "
        "torch's time is when it first reached it. onnxstyle's time: from the start of `Stylizer.run` (warm sessions) to "
        "the callback of the first evaluation whose image, re-evaluated in fp32 with onnxruntime on the same targets, "
        "is at or below the bar (the re-evaluations are not counted). Stages: (longest side, evaluations); the last "
        "stage's budget is large, the run stops at the bar, or unreached at "
        f"{res['cap']:g}× torch's time.",
        "",
    ]
    for px, e in res["sizes"].items():
        ref = e["reference"]
        lines += [
            f"## {ref['width']}x{ref['height']}",
            "",
            f"torch: bar **{ref['bar']:.5g}** at evaluation {ref['evaluation_at_bar']} of {ref['ref_evals']}, after "
            f"**{ref['time_to_bar_s']:.0f} s** ({ref['time_all_s']:.0f} s for all {ref['ref_evals']})"
            + (f"; reference reused from {ref['date']}" if ref.get("reused") else "") + ".",
            "",
            f"| side | strategy | stages | reached the bar | wall time | × torch (target ≥ {TARGET:g}×) | fp32 fallback at |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in e["rows"]:
            stages = " → ".join(f"({s}, {n})" for s, n in r["stages"])
            if r["reached"]:
                got = f"yes, evaluation {r['evaluations']}"
                ratio = f"{r['speedup']:.2f}×: {'met' if r['speedup'] >= TARGET else '**not met**'}"
            else:
                best = r["best_fp32_checked"]
                got = f"no ({'stopped at the cap' if r['why'] == 'cap' else 'budget spent'}" + (f"; best checked {best:.5g}" if best else "") + ")"
                ratio = "**not met**"
            fb = ", ".join(map(str, r["precision_switches"])) or "—"
            wall = f"{r['wall_s']:.0f} s" if r["wall_s"] >= 10 else f"{r['wall_s']:.1f} s"
            lines.append(f"| {SIDE[r['side']].label} | {r['strategy']} | {stages} | {got} | {wall} | {ratio} | {fb} |")
        lines.append("")
    lines += [f"Reproduce: `{res['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
