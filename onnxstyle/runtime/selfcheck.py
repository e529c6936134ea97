"""A models folder checked where it runs: once per machine, engine and precision, before the first run.

A folder validated at export on one machine may be copied to another, whose engine, engine
version or CPU family was never validated (an edge box with bf16 kernels the exporter did not
have). Before the first evaluation at its precision, an :class:`~onnxstyle.runtime.engine.Engine`
runs one small, fixed problem (:func:`problem`: a 64x48 content, style and image generated from
integers, the same bits on every machine, so nothing is stored) through its own graphs:

* in fp32, against the record the export wrote into the manifest (``selfcheck``: the loss of
  torch autograd and a digest of its gradient, :func:`digest`), within the fp32 tolerance the
  validator held that engine to (the gradient's widened to what 1e-5 nudges of the image do to
  torch's own gradient: a ReLU network's gradient jumps where rounding crosses a near-tie);
* in its reduced precision (bf16, fp16), against its own fp32 on this machine. The limits are the
  validator's rule (``bf16_limits_from``: the worst draw times the slack) over two kinds of draw:
  the reference's bf16 draws on this problem recorded at export (bf16 storage emulated in torch,
  so the same on every CPU), and this engine's own on this machine (each nudged input's error with
  the first input's removed: the rounding noise of this CPU's kernels, which a noisier family
  shows here). A wrong kernel is a systematic error, which the second kind cancels out.

An export without the record (format 4 and older, or exported without validation) gets the
second part only, on its gradient (the loss's bf16 error is systematic, which only the
reference's draws bound). The verdict is cached in the compiled cache (:func:`cache.read_verdict`),
keyed by the export's files, the record, the engine and its version, the device, the precision
and the CPU, so the check runs once; a cache that cannot be written only means checking again.

On failure: precision ``auto`` falls back to fp32 with one warning line; an explicit reduced
precision is a :class:`DeviceError` (exit 8); fp32 itself disagreeing with the record is a
:class:`DeviceError` (the files are as exported: the engine is wrong here) or a
:class:`ModelsError` (a file differs from the export: a broken copy).

``ONNXSTYLE_SELFCHECK=recheck`` ignores stored verdicts (and replaces them); ``off`` skips the
check (benchmarks of a first start; an edge box should not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DeviceError, ModelsError
from ..exportdir import FEATURES, LOSS_GRAD, file_sha256
from . import cache

if TYPE_CHECKING:
    from .engine import Engine, LossGrad

ENV = "ONNXSTYLE_SELFCHECK"
RECORD = "selfcheck"  # the manifest's key
# Bump when the problem, the digest or the rule changes: stored verdicts then no longer apply.
VERSION = 1
GENERATOR = "splitmix64-grid-v1"
HEIGHT, WIDTH = 48, 64
SEED = 20240601
DIRECTIONS = 16  # random directions the recorded gradient is projected on
# The nudge of the extra draws: validate.BF16_NUDGE (a quarter of a bf16 step at 0.5).
NUDGE = 1e-3
NUDGED_DRAWS = 2
# The validator's rule (validate.BF16_SLACK, BF16_LOSS_SLACK), for records that do not carry it.
SLACK = 1.3
LOSS_SLACK = 3.0
# fp32 tolerances the validator uses (validate.LIMITS), for records that do not carry them.
FP32_TOL = {"fp32": 1e-3, "openvino fp32": 1e-2}
# Whether the check's own compiles (OpenVINO's and TensorRT's, per shape) go into the compiled
# cache: not by default, as the problem's size is never run again and its blobs are 200 MB; a
# test suite that checks many copies of one export turns it on to compile them once.
CACHE_COMPILES = False

log = logging.getLogger("onnxstyle.selfcheck")


# ---- the problem: the same bits on every machine ------------------------------------------------
def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 (wrapping): a hash of the index, the same everywhere."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, n: int) -> np.ndarray:
    """``n`` float32 in [0, 1) from (seed, index) alone: 24-bit integers over 2^24, exact.
    Not numpy's generators, whose streams may change between versions."""
    start = np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        bits = _mix(np.arange(n, dtype=np.uint64) + start) >> np.uint64(40)
    return bits.astype(np.float32) / np.float32(2**24)


def test_image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A photo-like [1,3,H,W] image in [0.05, 0.95]: a coarse random grid, bilinearly smooth,
    plus fine texture; only float32 additions and products, so bit-exact on every machine."""
    gh, gw = 7, 9
    grid = uniform(seed, 3 * gh * gw).reshape(3, gh, gw)
    ys = np.arange(height, dtype=np.float32) * np.float32((gh - 1) / (height - 1))
    xs = np.arange(width, dtype=np.float32) * np.float32((gw - 1) / (width - 1))
    y0, x0 = np.minimum(ys.astype(np.int64), gh - 2), np.minimum(xs.astype(np.int64), gw - 2)
    fy, fx = (ys - y0.astype(np.float32))[:, None], (xs - x0.astype(np.float32))[None, :]
    top = grid[:, y0][:, :, x0] * (1 - fx) + grid[:, y0][:, :, x0 + 1] * fx
    bottom = grid[:, y0 + 1][:, :, x0] * (1 - fx) + grid[:, y0 + 1][:, :, x0 + 1] * fx
    smooth = top * (1 - fy) + bottom * fy
    texture = uniform(seed + 1, 3 * height * width).reshape(3, height, width)
    img = np.float32(0.05) + np.float32(0.9) * (np.float32(0.75) * smooth + np.float32(0.25) * texture)
    return img[None].astype(np.float32)


@dataclass(frozen=True)
class Problem:
    content: np.ndarray
    style: np.ndarray
    image: np.ndarray  # the image whose loss and gradient are checked

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[2]), int(self.image.shape[3])

    def nudged(self, i: int, amount: float = NUDGE) -> np.ndarray:
        """The image moved by noise of ±``amount``: with NUDGE, every activation rounds another way
        in bf16 while the problem stays the same to 1e-3."""
        noise = uniform(SEED + 100 + i, self.image.size).reshape(self.image.shape) * np.float32(2) - np.float32(1)
        return np.clip(self.image + np.float32(amount) * noise, 0, 1).astype(np.float32)


def problem(seed: int = SEED, height: int = HEIGHT, width: int = WIDTH) -> Problem:
    content, style = test_image(seed, height, width), test_image(seed + 2, height, width)
    jitter = uniform(seed + 4, content.size).reshape(content.shape) - np.float32(0.5)
    image = np.clip(content + np.float32(0.1) * jitter, np.float32(0.02), np.float32(0.98)).astype(np.float32)
    return Problem(content, style, image)


def directions(n: int, count: int = DIRECTIONS, seed: int = SEED) -> np.ndarray:
    """``count`` fixed random unit vectors of length ``n`` (float64)."""
    d = uniform(seed + 7, count * n).reshape(count, n).astype(np.float64) - 0.5
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def digest(grad: np.ndarray) -> dict[str, Any]:
    """A gradient in 18 numbers: its norm, its largest magnitude, and its projections on fixed
    random unit directions, scaled by sqrt(size) / norm so that each is of order 1 and an error
    ``e`` moves it by about |e| / |grad|."""
    g = np.asarray(grad, np.float64).ravel()
    norm = float(np.linalg.norm(g))
    proj = directions(g.size) @ g
    scale = math.sqrt(g.size) / norm if norm > 0 else 0.0
    return {"norm": norm, "max_abs": float(np.abs(g).max()), "projections": [float(p * scale) for p in proj]}


def digest_error(got: dict[str, Any], ref: dict[str, Any]) -> float:
    """The largest relative difference between two digests (norm, max, projections)."""
    n = ref["norm"]
    errs = [abs(got["norm"] - n) / n, abs(got["max_abs"] - ref["max_abs"]) / ref["max_abs"]]
    errs += [abs(a - b) for a, b in zip(got["projections"], ref["projections"])]
    if len(got["projections"]) != len(ref["projections"]):
        return float("inf")
    return max(errs) if all(math.isfinite(e) for e in errs) else float("inf")


# ---- comparisons ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Draw:
    """One reduced-precision run against fp32 (validate.Bf16Draw, torch-free)."""

    grad_err: float  # max |grad - ref| / max |ref|
    grad_cos_gap: float  # 1 - cosine(grad, ref)
    loss_err: float  # |loss - ref| / |ref|


def compare(loss: float, grad: np.ndarray, ref_loss: float, ref_grad: np.ndarray) -> Draw:
    g, r = np.asarray(grad, np.float64), np.asarray(ref_grad, np.float64)
    scale = float(np.abs(r).max())
    err = float(np.abs(g - r).max() / scale) if scale > 0 else float("inf")
    cos = float((g * r).sum() / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-30))
    loss_err = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
    bad = not (math.isfinite(err) and math.isfinite(cos) and math.isfinite(loss_err))
    return Draw(float("inf"), float("inf"), float("inf")) if bad else Draw(err, 1.0 - cos, loss_err)


def limits_from(draws: list[Draw], slack: float = SLACK, loss_slack: float = LOSS_SLACK, floor: float = 0.0) -> tuple[float, float, float]:
    """(gradient max error, gradient 1 - cosine, loss error) allowed: the worst draw of each,
    times the slack (validate.bf16_limits_from), and never under ``floor`` (fp32's tolerance: a
    reduced precision whose draws are exact is held to fp32's limit, not to zero)."""
    grad = max([slack * d.grad_err for d in draws] + [floor])
    gap = max([slack * d.grad_cos_gap for d in draws] + [floor])
    loss = max([loss_slack * d.loss_err for d in draws] + [floor])
    return grad, gap, loss


# ---- the verdict ---------------------------------------------------------------------------
@dataclass
class Verdict:
    ok: bool
    precision: str
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "precision": self.precision, "reason": self.reason, "stats": self.stats, "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(bool(d["ok"]), str(d["precision"]), str(d.get("reason", "")), dict(d.get("stats", {})), float(d.get("seconds", 0)), True)


def record_of(engine: Engine) -> dict[str, Any] | None:
    """The manifest's record, if it is one this onnxstyle can reproduce the problem of."""
    rec = engine.manifest.data.get(RECORD)
    if not isinstance(rec, dict) or rec.get("version") != VERSION or rec.get("generator") != GENERATOR:
        return None
    if rec.get("seed") != SEED or rec.get("size") != [HEIGHT, WIDTH]:  # another problem than this one's
        return None
    try:
        if not math.isfinite(float(rec["loss"])) or float(rec["grad"]["norm"]) <= 0:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return rec


def _backend_version(engine: Engine) -> str:
    try:
        if engine.choice.backend == "openvino":
            import openvino

            return str(openvino.__version__)
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:
        return "?"


def key(engine: Engine, precision: str) -> dict[str, Any]:
    """What a verdict holds for: the export's files (size and mtime too: a copy is checked
    again), its record, the engine, its version, the device, the precision (and the CPU,
    which cache.verdict_path adds)."""
    rec = engine.manifest.data.get(RECORD)
    record_hash = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16] if rec is not None else None
    ident = {g: cache.export_identity(engine.folder, g, exact=True) for g in (FEATURES, LOSS_GRAD)}
    choice = engine.choice
    return {
        "check": VERSION, "export": ident, "record": record_hash, "engine": choice.backend,
        "providers": list(choice.providers), "version": _backend_version(engine), "device": choice.device_id,
        "precision": precision,
    }


# ---- evaluating the problem on an engine ------------------------------------------------------
def _targets(probe: Engine, p: Problem) -> dict[str, np.ndarray]:
    """fp32 targets through the engine's own features graph, as a run computes them."""
    ct, st = probe.features(p.content), probe.features(p.style)
    feeds = {k: v for k, v in ct.items() if k.startswith("content_")}
    # Grams as the loss graph takes them: [1,C,C] for a guided one (one region), [C,C] for a plain
    # one; a format-2 folder pairs a plain features graph with a guided loss graph.
    dims = {i["name"]: len(i["shape"]) for i in probe.manifest.inputs(LOSS_GRAD)}
    for k, v in st.items():
        if k.startswith("gram_"):
            c = v.shape[-1]
            feeds[k] = v.reshape((1, c, c) if dims.get(k, v.ndim) == 3 else (c, c))
    if probe.guided:
        feeds["guide"] = np.ones((1, 1, *p.size), np.float32)
    return feeds


def evaluate(probe: Engine, image: np.ndarray, targets: dict[str, np.ndarray], exact: bool) -> LossGrad:
    """One loss and gradient of the problem (fp32 with ``exact``, else the engine's precision)."""
    return probe.loss_grad(image, targets, exact=exact)


def _probe(engine: Engine) -> Engine:
    """The engine, sharing its manifest and choice, without the check (it is running). Backends
    that compile per shape get runners of their own, closed after the check (and not cached,
    CACHE_COMPILES): the problem's size is never run again. onnxruntime's runners serve every
    size: those the check makes are the engine's, and stay warm for the run."""
    probe = object.__new__(type(engine))
    probe.__dict__.update(engine.__dict__)
    probe._checking = True
    if engine.choice.per_shape:
        probe._runners = {}
    return probe


def _close(probe: Engine, engine: Engine) -> None:
    if probe._runners is not engine._runners:
        for r in probe._runners.values():
            r.close()
        probe._runners.clear()


def _fp32_part(engine: Engine, rec: dict[str, Any] | None, loss: float, grad: np.ndarray) -> Verdict:
    if rec is None:
        return Verdict(True, "fp32", "no record in the manifest (an older export): fp32 not compared with the export's")
    label = _label(engine)
    tol, grad_tol = _tolerance(rec, "tolerance", label), _tolerance(rec, "grad_tolerance", label)
    ref_loss = float(rec["loss"])
    loss_err = abs(loss - ref_loss) / abs(ref_loss) if ref_loss != 0 else abs(loss)
    grad_err = digest_error(digest(grad), rec["grad"]) if np.isfinite(grad).all() else float("inf")
    stats = {"loss": loss, "recorded_loss": ref_loss, "loss_err": loss_err, "grad_digest_err": grad_err, "tolerance": tol, "grad_tolerance": grad_tol}
    if not loss_err <= tol:  # NaN fails
        return Verdict(False, "fp32", f"loss {loss:.6g} where torch gave {ref_loss:.6g} (rel err {loss_err:.1e} > {tol:.0e})", stats)
    if not grad_err <= grad_tol:
        return Verdict(False, "fp32", f"gradient differs from torch's by {grad_err:.1e} of its norm (> {grad_tol:.1e})", stats)
    return Verdict(True, "fp32", "", stats)


def _label(engine: Engine) -> str | None:
    """Which of the validator's fp32 tolerances applies: OpenVINO's (Winograd convolutions),
    onnxruntime CPU's; None for the GPUs, which validation never saw (TF32 convolutions)."""
    if engine.choice.backend == "openvino":
        return "openvino fp32"
    return "fp32" if engine.choice.providers[:1] == ("CPUExecutionProvider",) else None


def _tolerance(rec: dict[str, Any], field_name: str, label: str | None) -> float:
    """The record's tolerance for ``label``; the loosest it has for an engine it has none for."""
    tols = rec.get(field_name) or rec.get("tolerance") or FP32_TOL
    if label is None or label not in tols:
        return float(max(tols.values()))
    return float(tols[label])


def _reduced_part(
    engine: Engine, probe: Engine, rec: dict[str, Any] | None, p: Problem, targets: dict[str, np.ndarray], base: LossGrad,
    floor: float,
) -> Verdict:
    precision = engine.choice.precision
    got = evaluate(probe, p.image, targets, exact=False)
    first = compare(got.loss, got.grad, base.loss, base.grad)
    # This machine's draws: each nudged image's reduced-precision error with the first image's
    # removed (its systematic part), against fp32 on its own image: rounding noise alone.
    err0 = np.asarray(got.grad, np.float64) - np.asarray(base.grad, np.float64)
    here = []
    for i in range(NUDGED_DRAWS):
        x = p.nudged(i)
        ref, red = evaluate(probe, x, targets, exact=True), evaluate(probe, x, targets, exact=False)
        d = compare(red.loss, np.asarray(red.grad, np.float64) - err0, ref.loss, ref.grad)
        here.append(dataclasses.replace(d, loss_err=0.0))  # the loss's error is systematic: says nothing
    recorded = [Draw(float(d["grad_err"]), float(d["grad_cos_gap"]), float(d["loss_err"])) for d in (rec or {}).get("bf16_draws", [])]
    slack = float((rec or {}).get("slack", SLACK))
    loss_slack = float((rec or {}).get("loss_slack", LOSS_SLACK))
    grad_lim, gap_lim, loss_lim = limits_from(recorded + here, slack, loss_slack, floor)
    if not recorded:
        loss_lim = float("inf")  # only the reference's draws bound the loss's (systematic) error
    stats = {
        "grad_err": first.grad_err, "grad_cos_gap": first.grad_cos_gap, "loss_err": first.loss_err,
        "limits": {"grad_err": grad_lim, "grad_cos_gap": gap_lim, "loss_err": loss_lim},
        "draws_here": [dataclasses.asdict(d) for d in here], "recorded_draws": len(recorded),
    }
    fails = []
    if not first.grad_err <= grad_lim:
        fails.append(f"gradient max err {first.grad_err:.3g} of max > {grad_lim:.3g}")
    if not first.grad_cos_gap <= gap_lim:
        fails.append(f"gradient 1-cosine {first.grad_cos_gap:.2e} > {gap_lim:.2e}")
    if not first.loss_err <= loss_lim:
        fails.append(f"loss rel err {first.loss_err:.2e} > {loss_lim:.2e}")
    return Verdict(not fails, precision, "; ".join(fails), stats)


def run_check(engine: Engine) -> tuple[Verdict, Verdict | None]:
    """(fp32's verdict, the reduced precision's or None): the problem evaluated on ``engine``."""
    t0 = time.perf_counter()
    rec = record_of(engine)
    p = problem()
    probe = _probe(engine)
    try:
        with cache.uncached(engine.choice.per_shape and not CACHE_COMPILES):
            targets = _targets(probe, p)
            base = evaluate(probe, p.image, targets, exact=True)
            fp32 = _fp32_part(engine, rec, base.loss, base.grad)
            fp32.seconds = time.perf_counter() - t0
            reduced = None
            if engine.choice.precision != "fp32" and fp32.ok:
                if not (math.isfinite(base.loss) and np.isfinite(base.grad).all()):
                    # fp32 itself overflows (weights out of range): no reference to hold bf16 to;
                    # the run's own fault handling reports it.
                    reduced = Verdict(True, engine.choice.precision, "fp32 is not finite on the problem: not compared")
                else:
                    floor = float((rec or {}).get("tolerance", FP32_TOL).get("fp32", FP32_TOL["fp32"]))
                    reduced = _reduced_part(engine, probe, rec, p, targets, base, floor)
                reduced.seconds = time.perf_counter() - t0
    finally:
        _close(probe, engine)
    return fp32, reduced


def _stored(engine: Engine, precision: str) -> Verdict | None:
    d = cache.read_verdict(key(engine, precision))
    try:
        return Verdict.from_dict(d) if d is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def _lookup(engine: Engine, precision: str) -> Verdict | None:
    """The stored verdict that decides: fp32's where it failed (nothing else can pass then)."""
    fp32 = _stored(engine, "fp32")
    if precision == "fp32" or (fp32 is not None and not fp32.ok):
        return fp32
    return _stored(engine, precision)


def ensure(engine: Engine) -> Verdict | None:
    """Check ``engine`` once (stored verdict, else the problem evaluated), and act on the
    verdict: an ``auto`` precision that fails falls back to fp32 (``engine.choice`` changes);
    anything else that fails raises. Returns the verdict of the precision the engine runs."""
    mode = os.environ.get(ENV, "").strip().lower()
    if mode in ("off", "0", "no", "false"):
        return None
    precision = engine.choice.precision
    t0 = time.perf_counter()
    verdict = None if mode == "recheck" else _lookup(engine, precision)
    if verdict is None:
        fp32, reduced = run_check(engine)
        # The fp32 verdict is stored whatever was asked: an fp32 engine of this export (a
        # fallback, a stall's exact engine) then needs no check of its own.
        cache.write_verdict(key(engine, "fp32"), fp32.to_dict())
        if reduced is not None:
            cache.write_verdict(key(engine, precision), reduced.to_dict())
        verdict = reduced if reduced is not None else fp32  # fp32 failed: the reduced one was not run
    cache.log_verdict(verdict.to_dict() | {"cached": verdict.cached, "engine": engine.provider}, time.perf_counter() - t0)
    if verdict.ok:
        return verdict
    if verdict.precision == "fp32":
        raise _fp32_failure(engine, verdict)
    if engine.config.precision == "auto":
        log.warning(
            f"warning: {engine.provider} failed this machine's check ({verdict.reason}); running fp32 instead"
        )
        _fall_back(engine)
        return verdict
    raise DeviceError(
        f"--precision {precision} is not usable with {engine.provider} on this machine: the models folder's check "
        f"failed ({verdict.reason}); use --precision fp32 (or auto)", "check", LOSS_GRAD, f"{WIDTH}x{HEIGHT}", engine.provider,
    )


def _fall_back(engine: Engine) -> None:
    reduced = engine.choice.precision
    engine.choice = dataclasses.replace(engine.choice, precision="fp32")
    for graph in list({k[0] for k in engine._runners}):
        engine.release(graph, precision=reduced)


def _fp32_failure(engine: Engine, verdict: Verdict) -> Exception:
    """A copy whose files differ from the export is the folder's fault; files as exported and an
    engine that computes them otherwise is the engine's (or a manifest edited by hand)."""
    files = engine.manifest.data.get("files") if isinstance(engine.manifest.data.get("files"), dict) else {}
    for name, entry in sorted(files.items()):
        want = entry.get("sha256") if isinstance(entry, dict) else None
        try:
            got = file_sha256(str(engine.folder / name))
        except OSError:
            got = None
        if want and got != want:
            return ModelsError(
                f"{engine.folder / name} differs from the export (sha256 {str(got)[:12]}…, the manifest says {want[:12]}…): "
                f"a broken copy; copy the folder again or re-export with: {engine.fix_hint}"
            )
    return DeviceError(
        f"{engine.provider} does not compute this models folder as exported: on the check problem its fp32 {verdict.reason} "
        f"(torch autograd, recorded at export); its files are as exported, so this engine (or an edited manifest) is wrong "
        f"here; choose another --device, or re-export on this machine", "check", LOSS_GRAD, f"{WIDTH}x{HEIGHT}", engine.provider,
    )
