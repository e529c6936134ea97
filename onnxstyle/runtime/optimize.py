"""The image optimization on the numpy side: L-BFGS-B (default) or Adam, driving loss_grad.

Arrays in, arrays out: no files, no printing. Progress is handed to a callback as an
:class:`Iterate`; the caller decides how to show it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, minimize


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


class _Stop(Exception):
    pass


class _Fault(Exception):
    pass


@dataclass
class _Tracker:
    """Counts evaluations, keeps the best image, reports progress, detects faults."""

    objective: Objective
    budget: int
    callback: Callable[[Iterate], None] | None
    shape: tuple[int, ...]
    spike_factor: float
    t0: float = field(default_factory=time.perf_counter)
    step: int = 0
    best: np.ndarray | None = None
    best_loss: float = float("inf")
    best_terms: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    faults: int = 0

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        if self.step >= self.budget:
            raise _Stop
        img = x.reshape(self.shape).astype(np.float32, copy=False)
        loss, grad, terms = self.objective(img)
        self.step += 1
        if not (np.isfinite(loss) and np.isfinite(grad).all()):
            self.faults += 1
            raise _Fault(f"non-finite loss or gradient at evaluation {self.step}")
        self.history.append(loss)
        if loss < self.best_loss:
            self.best_loss, self.best, self.best_terms = loss, img.copy(), terms
        if self.callback is not None:
            self.callback(Iterate(self.step, loss, terms, time.perf_counter() - self.t0, img, self.best_loss))
        return loss, grad

    def spiked(self, loss: float) -> bool:
        # Above both factor × best and the starting loss: the run has been undone, not
        # merely oscillating near a small minimum.
        if not self.history or not np.isfinite(self.best_loss):
            return False
        return loss > max(self.spike_factor * self.best_loss, self.history[0])

    def result(self, x0: np.ndarray, interrupted: bool = False, error: str | None = None) -> Result:
        image = self.best if self.best is not None else x0.astype(np.float32)
        return Result(
            np.clip(image, 0.0, 1.0),
            self.best_loss,
            self.best_terms,
            self.step,
            time.perf_counter() - self.t0,
            interrupted,
            self.faults,
            self.history,
            error,
        )


def lbfgs(
    objective: Objective,
    x0: np.ndarray,
    evaluations: int,
    history: int = 20,
    callback: Callable[[Iterate], None] | None = None,
    max_faults: int = 5,
) -> Result:
    """scipy's L-BFGS-B with the pixels bounded to [0, 1] (a true constraint, not clamping).

    scipy's default tolerances stop a style-transfer run after a few dozen steps, so both
    are zeroed: the run ends when the evaluation budget is spent. If the line search gives
    up early (it can, near a kink of max-pooling), the memory is reset and the run goes
    on from the best image, as long as the budget lasts.
    """
    track = _Tracker(objective, evaluations, callback, x0.shape, spike_factor=np.inf)
    x = x0.astype(np.float64).ravel()
    bounds = Bounds(np.zeros_like(x), np.ones_like(x))
    interrupted = False
    error = None
    stalled = 0
    while track.step < evaluations:
        before = track.step
        try:
            minimize(
                track,
                x,
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={
                    "maxcor": history,
                    "maxfun": evaluations - track.step + 1,
                    "maxiter": evaluations,
                    "ftol": 0.0,
                    "gtol": 0.0,
                    "maxls": 20,
                },
            )
        except _Stop:
            break
        except _Fault as e:
            if track.faults >= max_faults:
                error = f"{e}; stopped after {track.faults} faults"
                break
            # Roll back to the best image; a new minimize() call starts with empty memory.
            if track.best is not None:
                x = track.best.astype(np.float64).ravel()
            continue
        except KeyboardInterrupt:
            interrupted = True
            break
        # The line search gave up before the budget was spent: restart from the best image
        # with a fresh memory, unless restarts no longer make progress (converged).
        if track.best is not None:
            x = track.best.astype(np.float64).ravel()
        stalled = stalled + 1 if track.step - before <= 2 else 0
        if stalled >= 3:
            break
    return track.result(x0, interrupted, error)


def adam(
    objective: Objective,
    x0: np.ndarray,
    evaluations: int,
    lr: float = 0.02,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    callback: Callable[[Iterate], None] | None = None,
    max_faults: int = 5,
    spike_factor: float = 10.0,
) -> Result:
    """Adam on the [0,1] image, projected back into [0,1] after each step.

    ``lr`` is in pixel units: Adam's normalized step moves each channel value by about
    ``lr`` (0.02 ≈ 5 of 255 levels) per step at first.
    """
    track = _Tracker(objective, evaluations, callback, x0.shape, spike_factor=spike_factor)
    x = x0.astype(np.float32).copy()
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    t = 0
    interrupted = False
    error = None
    try:
        while track.step < evaluations:
            try:
                loss, g = track(x)
            except _Fault as e:
                if track.faults >= max_faults:
                    error = f"{e}; stopped after {track.faults} faults"
                    break
                x, m, v, t = _rollback(track, x0)
                continue
            if track.spiked(loss):
                track.faults += 1
                if track.faults >= max_faults:
                    error = f"loss spiked to {loss:.4g}; stopped after {track.faults} faults"
                    break
                x, m, v, t = _rollback(track, x0)
                continue
            t += 1
            g = g.astype(np.float32, copy=False)
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            mhat = m / (1 - betas[0] ** t)
            vhat = v / (1 - betas[1] ** t)
            x = np.clip(x - lr * mhat / (np.sqrt(vhat) + eps), 0.0, 1.0)
    except _Stop:
        pass
    except KeyboardInterrupt:
        interrupted = True
    return track.result(x0, interrupted, error)


def _rollback(track: _Tracker, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Back to the last good image with the optimizer's memory cleared."""
    x = (track.best if track.best is not None else x0).astype(np.float32).copy()
    return x, np.zeros_like(x), np.zeros_like(x), 0
