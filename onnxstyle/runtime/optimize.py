"""The image optimization on the numpy side: L-BFGS-B (default) or Adam, driving loss_grad.

Arrays in, arrays out: no files, no printing. Progress is handed to a callback as an
:class:`Iterate`; the caller decides how to show it. Ctrl-C is never swallowed: it leaves
as :class:`~onnxstyle.errors.Interrupted` carrying the best result so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import Interrupted, MissingDependencyError
from .settings import LBFGS_STEPS

Objective = Callable[[np.ndarray], tuple[float, np.ndarray, dict[str, float]]]


@dataclass(frozen=True)
class Iterate:
    """One gradient evaluation: the unit of cost, of progress and of ``--iterations``."""

    step: int
    loss: float
    terms: dict[str, float]
    elapsed: float
    image: np.ndarray = field(repr=False)  # the evaluated image, [1,3,H,W] float32 in [0,1]
    best_loss: float = float("inf")
    # Filled in by the caller that knows the whole plan (coarse-to-fine stages, video frames):
    # evaluations planned in all, and which stage this one belongs to.
    total: int = 0
    stage: int = 1
    stages: int = 1


@dataclass
class Result:
    image: np.ndarray  # the best image seen, [1,3,H,W] float32 in [0,1]
    loss: float
    terms: dict[str, float]
    evaluations: int
    elapsed: float
    interrupted: bool = False
    faults: int = 0
    history: list[float] = field(default_factory=list)
    # Set when repeated faults stopped the run early; the image is still the best seen.
    error: str | None = None
    # The evaluation at which a bf16 run went on in fp32 (its line search stalled), if it did.
    precision_switch: int | None = None
    # Why the run ended: "budget" (the cap), "converged" (the stop rule), "stalled", "error".
    stopped: str = "budget"
    # lbfgs32's memory at the end, for the next coarse-to-fine stage to start from (carry).
    memory: LbfgsMemory | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StopRule:
    """Stop a stage once the best loss has stopped improving: when, over the last ``window``
    evaluations, it fell by less than ``tol`` of itself. A fixed count spends the same
    evaluations on a stage that converged after 60 as on one still falling at 300; the
    budget stays the cap. ``window`` 0 or ``tol`` 0 disables the rule.

    ``min_evaluations``: never before this many (the first evaluations of a stage can sit
    on a plateau while the line search finds its scale).
    """

    window: int = 20
    tol: float = 2e-3
    min_evaluations: int = 0

    @property
    def active(self) -> bool:
        return self.window > 0 and self.tol > 0

    def converged(self, best: list[float]) -> bool:
        """``best``: the best loss after each evaluation since the window was last reset."""
        n = len(best)
        if not self.active or n <= self.window or n < self.min_evaluations:
            return False
        old, new = best[n - 1 - self.window], best[n - 1]
        if not (np.isfinite(old) and np.isfinite(new)):
            return False
        return old - new < self.tol * abs(old)


class _Stop(Exception):
    pass


class _Fault(Exception):
    pass


@dataclass
class _Driver:
    """What every optimizer shares: counts evaluations against the budget, keeps the best
    image, reports progress, detects faults, applies the stop rule, and runs an optimizer's
    update rule into a :class:`Result` (:meth:`run`). The optimizers keep only their rules.

    ``spike_factor``: also a fault, a loss above both ``spike_factor`` × the best and the
    starting loss (for the optimizers without a line search); None: no such check.
    """

    objective: Objective
    budget: int
    callback: Callable[[Iterate], None] | None
    shape: tuple[int, ...]
    spike_factor: float | None = None
    spike_detail: bool = True  # the spike's message names the best loss and the evaluation
    t0: float = field(default_factory=time.perf_counter)
    step: int = 0
    best: np.ndarray | None = None
    best_loss: float = float("inf")
    best_terms: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    faults: int = 0
    stop: StopRule | None = None
    best_trace: list[float] = field(default_factory=list)  # best loss per evaluation, for ``stop``
    stopped: str = "budget"

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        if self.step >= self.budget:
            raise _Stop
        if self.stop is not None and self.stop.converged(self.best_trace):
            # Checked before the next evaluation, not after the last: the caller has used
            # (and kept as best) everything evaluated so far.
            self.stopped = "converged"
            raise _Stop
        img = x.reshape(self.shape).astype(np.float32, copy=False)
        loss, grad, terms = self.objective(img)
        self.step += 1
        if not (np.isfinite(loss) and np.isfinite(grad).all()):
            self.faults += 1
            raise _Fault(f"non-finite loss or gradient at evaluation {self.step}")
        self.history.append(loss)
        if loss < self.best_loss:
            # Into the same buffer: a new copy beside the old one was one more image at the peak.
            if self.best is None or self.best.shape != img.shape:
                self.best = img.copy()
            else:
                np.copyto(self.best, img)
            self.best_loss, self.best_terms = loss, terms
        self.best_trace.append(self.best_loss)
        if self.callback is not None:
            self.callback(Iterate(self.step, loss, terms, time.perf_counter() - self.t0, img, self.best_loss))
        # A spike: above both factor × best and the starting loss, the run has been undone,
        # not merely oscillating near a small minimum.
        if self.spike_factor is not None and loss > max(self.spike_factor * self.best_loss, self.history[0]):
            self.faults += 1
            where = f" (best {self.best_loss:.4g}) at evaluation {self.step}" if self.spike_detail else ""
            raise _Fault(f"loss spiked to {loss:.4g}{where}")
        return loss, grad

    def run(
        self, x0: np.ndarray, update: Callable[[], bool], reset: Callable[[], None] | None = None,
        max_faults: int = 5, note: str = "",
    ) -> Result:
        """Calls ``update`` (one unit of an optimizer's rule, evaluating through this driver)
        until the budget is spent, the stop rule fires or ``update`` returns False.

        After a fault ``reset`` takes the optimizer back to the best image with its memory
        cleared and the run goes on, until ``max_faults`` of them end it; without ``reset``
        the first fault ends it. Ctrl-C is never swallowed: it leaves as Interrupted
        carrying the best result so far.
        """
        error = None
        try:
            while self.step < self.budget:
                try:
                    if not update():
                        break
                except _Fault as e:
                    if reset is None or self.faults >= max_faults:
                        error = f"{e}; stopped" + ("" if reset is None else f" after {self.faults} faults{note}")
                        break
                    reset()
        except _Stop:
            pass
        except KeyboardInterrupt as e:
            # The best result so far, and what interrupted it.
            raise Interrupted(self.result(x0, interrupted=True), getattr(e, "cause", None) or e) from e
        return self.result(x0, error=error)

    def restart(self, x0: np.ndarray) -> np.ndarray:
        """Where a run goes on after a fault: a float32 copy of the best image, else of x0."""
        return (self.best if self.best is not None else x0).astype(np.float32)

    def result(self, x0: np.ndarray, interrupted: bool = False, error: str | None = None) -> Result:
        image = self.best if self.best is not None else x0.astype(np.float32)
        return Result(
            np.clip(image, 0.0, 1.0), self.best_loss, self.best_terms, self.step, time.perf_counter() - self.t0,
            interrupted, self.faults, self.history, error, stopped="error" if error else self.stopped,
        )


def _scipy_optimize():  # type: ignore[no-untyped-def]
    """scipy.optimize, imported on first use: only ``lbfgs-b`` and ``keras-lbfgs`` need it,
    and it is 140 MB that the lean install (``pip install 'onnxstyle[cpu]'``) leaves out."""
    try:
        import scipy.optimize
    except ImportError:
        raise MissingDependencyError(
            "this optimizer needs scipy: pip install 'onnxstyle[scipy]' (or use the default --optimizer lbfgs)"
        ) from None
    return scipy.optimize


def lbfgs(
    objective: Objective, x0: np.ndarray, evaluations: int, history: int = 20,
    callback: Callable[[Iterate], None] | None = None, max_faults: int = 5,
) -> Result:
    """scipy's L-BFGS-B with the pixels bounded to [0, 1] (a true constraint, not clamping).

    scipy's default tolerances stop a style-transfer run after a few dozen steps, so both
    are zeroed: the run ends when the evaluation budget is spent. If the line search gives
    up early (it can, near a kink of max-pooling), the memory is reset and the run goes
    on from the best image, as long as the budget lasts.
    """
    so = _scipy_optimize()
    track = _Driver(objective, evaluations, callback, x0.shape)
    x = x0.astype(np.float64).ravel()
    bounds = so.Bounds(np.zeros_like(x), np.ones_like(x))
    options = {"maxcor": history, "maxiter": evaluations, "ftol": 0.0, "gtol": 0.0, "maxls": 20}
    stalled = 0

    def resume() -> None:
        # From the best image; a new minimize() call starts with empty memory.
        nonlocal x
        if track.best is not None:
            x = track.best.astype(np.float64).ravel()

    def update() -> bool:
        nonlocal stalled
        before = track.step
        so.minimize(
            track, x, jac=True, method="L-BFGS-B", bounds=bounds, options={**options, "maxfun": evaluations - track.step + 1}
        )
        # The line search gave up before the budget was spent: restart from the best image
        # with a fresh memory, unless restarts no longer make progress (converged).
        resume()
        stalled = stalled + 1 if track.step - before <= 2 else 0
        return stalled < 3

    return track.run(x0, update, resume, max_faults)


class LbfgsMemory:
    """L-BFGS curvature pairs in float32: 8 bytes per pixel per pair instead of scipy's 16.

    ``scaled``: ``gamma`` (the initial inverse-Hessian scale, sᵀy/yᵀy) is known, carried
    from a coarser stage, so a first step may take it instead of a guessed pixel move.
    ``absolute``: torch.optim.LBFGS's rule for keeping a pair, sᵀy > 1e-10, instead of the
    scale-free sᵀy > 1e-10·yᵀy.
    """

    def __init__(self, size: int, gamma: float = 1.0, scaled: bool = False, absolute: bool = False) -> None:
        self.s: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        self.rho: list[float] = []
        self.size, self.gamma, self.scaled, self.absolute = size, gamma, scaled, absolute

    def clear(self) -> None:
        self.s, self.y, self.rho, self.gamma, self.scaled = [], [], [], 1.0, False

    def add(self, s: np.ndarray, y: np.ndarray) -> None:
        sy, yy = float(np.dot(s, y)), float(np.dot(y, y))
        # Keep only pairs of positive curvature (a backtracking step does not guarantee it).
        if sy <= (1e-10 if self.absolute else 1e-10 * yy) or yy == 0.0:
            return
        if len(self.s) == self.size:
            self.s.pop(0), self.y.pop(0), self.rho.pop(0)
        self.s.append(s), self.y.append(y), self.rho.append(1.0 / sy)
        self.gamma, self.scaled = sy / yy, True

    def direction(self, g: np.ndarray, free: np.ndarray | None = None) -> np.ndarray:
        """-H·g by the two-loop recursion, H₀ = γ·I; with ``free``, on the free variables
        only and zero on the active bounds. Shared by lbfgs32 and torch_lbfgs (no bounds)."""
        q = -g if free is None else np.where(free, -g, np.float32(0))
        alpha = [0.0] * len(self.s)
        for i in range(len(self.s) - 1, -1, -1):
            alpha[i] = self.rho[i] * float(np.dot(self.s[i], q))
            q -= np.float32(alpha[i]) * self.y[i]
        q *= np.float32(self.gamma)
        for i in range(len(self.s)):
            beta = self.rho[i] * float(np.dot(self.y[i], q))
            q += np.float32(alpha[i] - beta) * self.s[i]
        if free is not None:
            q[~free] = 0
        return q

    def carried(self, size: int, ratio: float, resample: Callable[[np.ndarray], np.ndarray] | None = None) -> LbfgsMemory:
        """This memory for the next, finer stage of ``ratio`` × the pixels and ``size`` pairs.

        The losses are means over pixels, so a pixel's gradient (and the Hessian) shrinks as
        1/pixels and the inverse-Hessian scale γ grows with ``ratio``. With ``resample`` (a
        flat coarse image → a flat fine one) the pairs go too: s resampled, y resampled and
        divided by ``ratio``, which keeps each pair's sᵀy; without it only γ is carried.
        """
        out = LbfgsMemory(size, self.gamma * ratio, self.scaled)
        if resample is None:
            return out
        for s, y in list(zip(self.s, self.y))[-size:]:
            out.add(resample(s), resample(y) / np.float32(ratio))
        if not out.s:  # every resampled pair lost its positive curvature: the scale alone
            out.gamma, out.scaled = self.gamma * ratio, self.scaled
        return out


def lbfgs32(
    objective: Objective, x0: np.ndarray, evaluations: int, history: int = 10,
    callback: Callable[[Iterate], None] | None = None, max_faults: int = 5,
    on_stall: Callable[[], bool] | None = None, patience: int = 30,
    stop: StopRule | None = None, memory: LbfgsMemory | None = None, step: str = "unit",
) -> Result:
    """Projected L-BFGS with the pixels bounded to [0, 1], all state in float32.

    The memory is ``history`` pairs of float32 images plus a few work images: 40 bytes a
    pixel at history 10, against about 400 for scipy's float64 L-BFGS-B at 20 (which also
    keeps float64 bounds). The point moves along the projected path P(x + t·d), P the clip
    to [0, 1]; the curvature pairs take the intended step t·d.

    ``step``: how a step is accepted and aimed.

    * ``"unit"`` (default): once the memory holds a pair, the quasi-Newton step (t = 1) is
      taken as torch.optim.LBFGS takes it, even if the loss rose a little (non-monotone);
      only a loss above RISE × the last one backtracks. The direction is the whole
      two-loop one, pixels pushed past a bound simply clipped, while at most HELD_MAX of
      the variables are held at a bound (else the active set, as "armijo"). At 256 px (Tübingen × The
      Scream, bf16, 300 evaluations) this reached an fp32 loss 1.3% lower than "armijo"
      (1.1380 against 1.1533) and a style distance 6% lower: the Armijo search spent ~12%
      of the evaluations on backtracks from small rises that the next steps undo anyway,
      and the active set below cost another 0.2%.
    * ``"armijo"``: monotone. Variables at a bound with the gradient pushing outward are
      held (the active set), the two-loop direction acts on the others, and a backtracking
      (Armijo) search runs along the path. ``benchmarks/optimizer.py`` compares it with
      scipy's L-BFGS-B: within 0.3% of its loss at 300 evaluations, at 46% of its memory.

    ``on_stall``: called when the line search fails or the best loss has not improved for
    ``patience`` evaluations; returning True means the objective became more exact (bf16 →
    fp32), and the run goes on from the best image with a fresh memory.

    ``stop``: end the run early once the loss has stopped improving (:class:`StopRule`);
    ``evaluations`` stays the cap. ``memory``: start from these pairs and scale (a coarser
    stage's, :meth:`LbfgsMemory.carried`) instead of an empty memory. The memory at the end
    is handed back in ``Result.memory``.
    """
    track = _Driver(objective, evaluations, callback, x0.shape, stop=stop)
    mem = memory if memory is not None else LbfgsMemory(history)
    if step not in LBFGS_STEPS:
        raise ValueError(f"step {step!r}: choose {' or '.join(LBFGS_STEPS)}")
    rule = _ProjectedLbfgs(track, x0, mem, on_stall, patience, monotone=step == "armijo")
    result = track.run(x0, rule.update, rule.reset, max_faults)
    result.memory = mem
    return result


# "unit" steps: a loss above RISE × the last one is a real overshoot, not the small rises a
# quasi-Newton step makes and the next undoes; that one backtracks.
RISE = 2.0
# Above this share of variables held at a bound, "unit" aims with the active set too.
HELD_MAX = 0.1


class _ProjectedLbfgs:
    """lbfgs32's rule: one projected L-BFGS step per :meth:`update`."""

    def __init__(
        self, track: _Driver, x0: np.ndarray, mem: LbfgsMemory, on_stall: Callable[[], bool] | None, patience: int,
        monotone: bool = False,
    ) -> None:
        self.track, self.x0, self.mem, self.on_stall, self.patience = track, x0, mem, on_stall, patience
        self.monotone = monotone
        self.x = np.clip(x0.astype(np.float32).ravel(), 0.0, 1.0)
        self.f, self.g = 0.0, self.x  # set by the first evaluation
        self.evaluate, self.failures, self.improved = True, 0, (0, float("inf"))

    def reset(self) -> None:
        """Back to the best image, with a fresh memory, for the rest of the budget."""
        self.x = self.track.restart(self.x0).ravel()
        self.mem.clear()
        self.evaluate = True

    def update(self) -> bool:
        track = self.track
        if self.evaluate:
            f, g = track(self.x)
            self.f, self.g, self.evaluate = f, np.asarray(g, np.float32).ravel(), False
        if track.best_loss < self.improved[1]:
            self.improved = (track.step, track.best_loss)
        stalled = self.on_stall is not None and track.step - self.improved[0] >= self.patience
        if stalled or not self.step():
            return self.no_step(stalled)
        self.failures = 0
        return True

    def step(self) -> bool:
        """One L-BFGS step, to the point the search accepted; False if it found none."""
        x, g, mem = self.x, self.g, self.mem
        free = ~(((x <= 0) & (g > 0)) | ((x >= 1) & (g < 0)))  # not held at a bound by the gradient
        # "unit": torch's whole direction, clipped, while few pixels sit on a bound (~2% in
        # a style transfer); the active set where many do (there the intended steps of the
        # held pixels, paired with no change of their gradient, would spoil the curvature).
        d = mem.direction(g, free if self.monotone or free.mean() < 1 - HELD_MAX else None)
        if float(np.dot(g, d)) >= 0:  # not a descent direction: start the memory afresh
            mem.clear()
            d = np.where(free, -g, np.float32(0))
        # A fresh memory's first step moves the largest pixel by 10/255; then L-BFGS's own scale
        # (also a carried one: the direction is already γ-scaled). Capped at the same 10/255
        # while no pair of this stage exists yet: a carried scale is an estimate from another size.
        d_max = float(np.abs(d).max())
        found = self.search(d, 1.0 if mem.s or (mem.scaled and d_max <= 0.04) else min(1.0, 0.04 / max(d_max, 1e-12)))
        if found is None:
            return False
        xn, fn, gn, t = found
        # The curvature pair takes the intended step t·d, not the clipped one (as torch's
        # L-BFGS does with clamping): pixels held at a bound would otherwise pair a zero
        # step with a non-zero gradient change. Measured better (benchmarks/optimizer.md).
        # In place: d and the old g are not needed again, and two new images here were
        # two more at the stage's peak.
        d *= np.float32(t)
        mem.add(d, np.subtract(gn, g, out=g))
        self.x, self.f, self.g = xn, fn, gn
        return True

    def search(self, d: np.ndarray, t: float, max_tries: int = 10) -> tuple[np.ndarray, float, np.ndarray, float] | None:
        """Backtracking along the projected path P(x + t·d) until the Armijo condition holds;
        (x, f, g, t) at the accepted point."""
        x, f, g = self.x, self.f, self.g
        slope = float(np.dot(g, d))
        # A unit quasi-Newton step is taken unless it overshoots (see lbfgs32's ``step``).
        lenient = not self.monotone and bool(self.mem.s) and t == 1.0
        for _ in range(max_tries):
            xn = x + np.float32(t) * d
            np.clip(xn, 0.0, 1.0, out=xn)
            fn, gn = self.track(xn)
            if fn <= f + 1e-4 * float(np.dot(g, xn - x)) or (lenient and fn <= RISE * f):
                return xn, fn, np.asarray(gn, np.float32).ravel(), t
            lenient = False
            # Minimum of the quadratic through f, the slope and fn; kept within [t/10, t/2].
            denom = 2.0 * (fn - f - t * slope)
            t_q = -slope * t * t / denom if denom > 0 else 0.5 * t
            t = min(max(t_q, 0.1 * t), 0.5 * t)
        return None

    def no_step(self, patience_ran_out: bool) -> bool:
        """No step found, or no progress for ``patience``: False ends the run."""
        if self.on_stall is not None:
            upgraded, self.on_stall = self.on_stall(), None  # one upgrade, then plain L-BFGS
            if upgraded:
                # A more exact objective (bf16 → fp32): its losses, and the stop rule's window,
                # are not comparable with the old ones.
                self.reset()
                self.track.best_loss, self.track.best_trace, self.failures = float("inf"), [], 0
                return True
            if patience_ran_out:
                return True
        self.failures += 1
        self.mem.clear()
        if self.failures >= 3:  # three fresh starts without progress: converged
            self.track.stopped = "stalled"
            return False
        return True


def adam(
    objective: Objective, x0: np.ndarray, evaluations: int,
    lr: float = 0.02, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
    callback: Callable[[Iterate], None] | None = None, max_faults: int = 5,
    spike_factor: float = 10.0, tf_epsilon: bool = False,
) -> Result:
    """Adam on the [0,1] image, projected back into [0,1] after each step.

    ``tf_epsilon``: Keras/TensorFlow's form, x -= lr·√(1-β₂ᵗ)/(1-β₁ᵗ) · m/(√v + ε), whose ε
    acts on the un-corrected √v (the TF tutorial's ε = 0.1 depends on it).

    ``lr`` is in pixel units: Adam's normalized step moves each channel value by about
    ``lr`` (0.02 ≈ 5 of 255 levels) per step at first.
    """
    track = _Driver(objective, evaluations, callback, x0.shape, spike_factor=spike_factor, spike_detail=False)
    x = x0.astype(np.float32).copy()
    m, v, t = np.zeros_like(x), np.zeros_like(x), 0

    def update() -> bool:
        nonlocal x, m, v, t
        g = track(x)[1].astype(np.float32, copy=False)
        t += 1
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        if tf_epsilon:
            lr_t = lr * np.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
            x = np.clip(x - lr_t * m / (np.sqrt(v) + eps), 0.0, 1.0)
        else:
            mhat = m / (1 - betas[0] ** t)
            vhat = v / (1 - betas[1] ** t)
            x = np.clip(x - lr * mhat / (np.sqrt(vhat) + eps), 0.0, 1.0)
        return True

    def reset() -> None:
        # Back to the last good image with the optimizer's memory cleared.
        nonlocal x, m, v, t
        x = track.restart(x0)
        m, v, t = np.zeros_like(x), np.zeros_like(x), 0

    return track.run(x0, update, reset, max_faults)


def torch_lbfgs(
    objective: Objective, x0: np.ndarray, evaluations: int,
    history: int = 100, lr: float = 1.0, max_iter: int = 20, clamp: bool = True,
    callback: Callable[[Iterate], None] | None = None,
    tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, max_faults: int = 5, spike_factor: float = 10.0,
) -> Result:
    """torch.optim.LBFGS (no line search) re-written in numpy, driven as the PyTorch tutorial does.

    The tutorial calls ``optimizer.step(closure)`` until 300 evaluations have run, each
    step doing up to ``max_iter`` iterations, and its closure clamps the image to [0,1]
    in place before evaluating. This follows torch's code line by line (two-loop
    recursion, first step min(1, 1/|g|₁)·lr, curvature pairs kept when yᵀs > 1e-10),
    in float32 like torch, so that the preset reproduces the notebook's trajectory.

    Without a line search a step can overshoot badly ("the loss jumps for a moment"): a
    loss above both ``spike_factor`` × the best and the starting loss, or a NaN, rolls
    back to the best image with the memory cleared; ``max_faults`` of them end the run.
    """
    track = _Driver(objective, evaluations, callback, x0.shape, spike_factor=spike_factor)
    x = x0.astype(np.float32).ravel().copy()
    mem = LbfgsMemory(history, absolute=True)  # torch's old_stps, old_dirs, ro and H_diag
    # The rest of torch's state: its n_iter, d, t, prev_flat_grad and prev_loss.
    n_iter, d, t, prev_g, prev_loss = 0, x, lr, x, 0.0

    def closure() -> tuple[float, np.ndarray]:
        if clamp:
            np.clip(x, 0.0, 1.0, out=x)
        loss, g = track(x)
        return float(loss), np.asarray(g, np.float32).ravel()

    def update() -> bool:
        """One ``optimizer.step(closure)``."""
        nonlocal n_iter, d, t, prev_g, prev_loss
        loss, g = closure()
        if np.abs(g).max() <= tolerance_grad:
            return False
        evals = 1
        for i in range(1, max_iter + 1):
            n_iter += 1
            if n_iter == 1:
                d = -g
                mem.clear()
            else:
                mem.add(d * t, g - prev_g)
                d = mem.direction(g)
            prev_g, prev_loss = g.copy(), loss
            t = min(1.0, 1.0 / float(np.abs(g).sum())) * lr if n_iter == 1 else lr
            if float(g @ d) > -tolerance_change:
                break
            x[:] += np.float32(t) * d
            if i != max_iter:
                loss, g = closure()
                evals += 1
            if i == max_iter or evals >= int(max_iter * 1.25) or np.abs(g).max() <= tolerance_grad:
                break
            if np.abs(d * t).max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break
        return True

    def reset() -> None:
        # Back to the best image; n_iter 0 makes the next iteration clear the memory.
        nonlocal n_iter
        x[:] = track.restart(x0).ravel()
        n_iter = 0

    return track.run(x0, update, reset, max_faults, note=" (torch-style L-BFGS has no line search)")


def lbfgs_rounds(
    objective: Objective, x0: np.ndarray, rounds: int, maxfun: int, history: int = 10,
    pixel_scale: float = 255.0, callback: Callable[[Iterate], None] | None = None,
) -> Result:
    """The Keras example: ``fmin_l_bfgs_b(maxfun=20)`` restarted ``rounds`` times, unbounded.

    The notebook optimizes the 0-255 preprocessed image; L-BFGS is invariant to its channel
    swap and mean shift but not to the ×255 scale, so the variable here is 255·x and the
    gradient is divided accordingly. scipy's defaults (m=10, factr=1e7, pgtol=1e-5) as in
    the notebook; pixels are clipped only when the result is saved.
    """
    minimize = _scipy_optimize().minimize
    track = _Driver(objective, rounds * maxfun, callback, x0.shape)
    z = x0.astype(np.float64).ravel() * pixel_scale
    done = 0

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        loss, g = track(z / pixel_scale)
        return loss, np.asarray(g, np.float64).ravel() / pixel_scale

    def update() -> bool:
        nonlocal z, done
        z = minimize(fun, z, jac=True, method="L-BFGS-B", options={"maxfun": maxfun, "maxcor": history}).x
        done += 1
        return done < rounds

    # No reset: as in the notebook, a fault ends the run (with the best image so far).
    return track.run(x0, update)
