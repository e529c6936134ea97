"""The optimizers on problems with known minima (no graphs needed)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxstyle.runtime.optimize import Iterate, adam, lbfgs


def quadratic(target: np.ndarray, scale: np.ndarray):  # type: ignore[no-untyped-def]
    def f(x: np.ndarray):  # type: ignore[no-untyped-def]
        d = x - target
        return float((scale * d * d).sum()), (2 * scale * d).astype(np.float32), {"loss_q": float((scale * d * d).sum())}

    return f


def test_lbfgs_reaches_the_bounded_minimum() -> None:
    rng = np.random.default_rng(0)
    # Part of the target lies outside [0,1]: the constrained minimum is the target clipped.
    target = rng.uniform(-0.5, 1.5, (1, 3, 8, 9)).astype(np.float32)
    scale = rng.uniform(0.1, 10, target.shape)  # ill-conditioned on purpose
    steps: list[Iterate] = []
    res = lbfgs(quadratic(target, scale), np.full(target.shape, 0.5, np.float32), 200, callback=steps.append)
    np.testing.assert_allclose(res.image, np.clip(target, 0, 1), atol=1e-4)
    assert res.image.min() >= 0 and res.image.max() <= 1
    assert res.evaluations == len(steps) <= 200
    assert [s.step for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1].best_loss == pytest.approx(res.loss)


def test_lbfgs_spends_exactly_the_budget_on_a_hard_problem() -> None:
    # A Rosenbrock-like valley is not solved in 25 evaluations: the budget is the stop.
    def f(x: np.ndarray):  # type: ignore[no-untyped-def]
        a, b = x[..., :-1], x[..., 1:]
        loss = float((100 * (b - a * a) ** 2 + (1 - a) ** 2).sum())
        g = np.zeros_like(x, dtype=np.float64)
        g[..., :-1] += -400 * a * (b - a * a) - 2 * (1 - a)
        g[..., 1:] += 200 * (b - a * a)
        return loss, g, {}

    res = lbfgs(f, np.zeros((1, 3, 4, 6), np.float32), 25)
    assert res.evaluations == 25


def test_adam_moves_towards_the_minimum_in_pixel_units() -> None:
    target = np.full((1, 3, 4, 4), 0.8, np.float32)
    res = adam(quadratic(target, np.ones_like(target)), np.zeros_like(target), 1, lr=0.02)
    assert res.evaluations == 1
    res = adam(quadratic(target, np.ones_like(target)), np.zeros_like(target), 300, lr=0.02)
    np.testing.assert_allclose(res.image, target, atol=0.02)


def test_faults_roll_back_and_never_yield_nan() -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(0.1, 0.9, (1, 3, 6, 6)).astype(np.float32)
    # Ill-conditioned, so neither optimizer is done before the faults arrive.
    base = quadratic(target, rng.uniform(0.01, 10, target.shape))
    calls = {"n": 0}

    def flaky(x: np.ndarray):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss, g, t = base(x)
        if calls["n"] in (4, 9):
            g = g.copy()
            g.flat[0] = np.nan
        if calls["n"] == 12:
            loss = float("inf")
        return loss, g, t

    for opt in (lbfgs, adam):
        calls["n"] = 0
        kwargs = {"lr": 0.05} if opt is adam else {}
        res = opt(flaky, np.full(target.shape, 0.9, np.float32), 80, **kwargs)
        assert res.faults == 3 and res.error is None
        assert np.isfinite(res.image).all()
        assert res.loss < base(np.full(target.shape, 0.9, np.float32))[0] / 10


def test_repeated_faults_stop_with_a_message_and_keep_the_best() -> None:
    rng = np.random.default_rng(2)
    target = rng.uniform(0.1, 0.9, (1, 3, 6, 6)).astype(np.float32)
    base = quadratic(target, rng.uniform(0.01, 10, target.shape))
    calls = {"n": 0}

    def broken(x: np.ndarray):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss, g, t = base(x)
        return (loss if calls["n"] < 6 else float("nan")), g, t

    res = lbfgs(broken, np.full(target.shape, 0.9, np.float32), 100, max_faults=3)
    assert res.error is not None and "3 faults" in res.error
    assert np.isfinite(res.image).all()
    assert res.loss <= base(np.full(target.shape, 0.9, np.float32))[0]


def test_adam_rolls_back_a_loss_spike() -> None:
    target = np.full((1, 3, 4, 4), 0.3, np.float32)
    base = quadratic(target, np.ones_like(target))
    calls = {"n": 0}

    def spiky(x: np.ndarray):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss, g, t = base(x)
        if calls["n"] == 20:
            return loss * 1e4, g * 1e4, t
        return loss, g, t

    res = adam(spiky, np.full(target.shape, 0.9, np.float32), 100, lr=0.02)
    assert res.faults == 1
    assert res.loss == min(res.history)


def test_torch_style_lbfgs_follows_torch_optim_lbfgs() -> None:
    """Same objective, same clamping closure as the PyTorch tutorial: the same losses."""
    import torch

    from onnxstyle.runtime.optimize import torch_lbfgs

    rng = np.random.default_rng(3)
    n = 60
    a = rng.standard_normal((n, n)).astype(np.float32)
    hess = (a @ a.T / n + 0.05 * np.eye(n)).astype(np.float32)
    target = rng.uniform(-0.2, 1.2, n).astype(np.float32)

    def f(x: np.ndarray):  # type: ignore[no-untyped-def]
        d = (x.ravel() - target).astype(np.float64)
        return float(d @ hess @ d), (2 * hess @ d).astype(np.float32).reshape(x.shape), {}

    x0 = np.full((1, 3, 4, 5), 0.5, np.float32)
    ours = torch_lbfgs(f, x0, 60, history=100).history

    x = torch.from_numpy(x0.copy()).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, history_size=100, max_iter=20)
    theirs: list[float] = []

    def closure():  # type: ignore[no-untyped-def]
        with torch.no_grad():
            x.clamp_(0, 1)
        opt.zero_grad()
        loss, g, _ = f(x.detach().numpy())
        theirs.append(loss)
        x.grad = torch.from_numpy(g)
        return torch.tensor(loss)

    while len(theirs) < 60:
        opt.step(closure)
    theirs = theirs[:60]
    assert len(ours) == 60
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)
    assert min(ours) < ours[0] / 2


def test_tf_adam_form_differs_only_in_epsilon() -> None:
    target = np.full((1, 3, 4, 4), 0.8, np.float32)
    f = quadratic(target, np.ones_like(target))
    x0 = np.zeros_like(target)
    # With ε → 0 both forms take the same steps.
    a = adam(f, x0, 20, lr=0.01, eps=1e-12).image
    b = adam(f, x0, 20, lr=0.01, eps=1e-12, tf_epsilon=True).image
    np.testing.assert_allclose(a, b, atol=1e-5)
    # One step by hand with TF's form and ε = 0.1: x1 = lr·√(1-β₂)/(1-β₁) · m/(√v + ε).
    g = -1.6  # d/dx (x - 0.8)² at 0
    m, v = 0.01 * g, 0.001 * g * g
    expect = -0.02 * np.sqrt(1 - 0.999) / (1 - 0.99) * m / (np.sqrt(v) + 0.1)
    one = adam(f, x0, 2, lr=0.02, betas=(0.99, 0.999), eps=0.1, tf_epsilon=True)
    seen: list = []
    adam(f, x0, 2, lr=0.02, betas=(0.99, 0.999), eps=0.1, tf_epsilon=True, callback=seen.append)
    np.testing.assert_allclose(seen[1].image, np.full_like(x0, expect), rtol=1e-5)
    assert one.evaluations == 2


def test_keras_rounds_are_scale_aware() -> None:
    from onnxstyle.runtime.optimize import lbfgs_rounds

    target = np.full((1, 3, 4, 4), 0.3, np.float32)
    f = quadratic(target, np.ones_like(target))
    res = lbfgs_rounds(f, np.full_like(target, 0.9), rounds=3, maxfun=20)
    np.testing.assert_allclose(res.image, target, atol=1e-3)
    assert res.evaluations <= 60


# ---- the float32 projected L-BFGS (the default `lbfgs`) ------------------------------------------
from onnxstyle.errors import Interrupted  # noqa: E402
from onnxstyle.runtime.optimize import lbfgs32  # noqa: E402


def test_float32_lbfgs_reaches_the_bounded_minimum_like_scipy() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(-0.5, 1.5, (1, 3, 8, 9)).astype(np.float32)
    scale = rng.uniform(0.1, 10, target.shape)
    steps: list[Iterate] = []
    res = lbfgs32(quadratic(target, scale), np.full(target.shape, 0.5, np.float32), 200, history=10, callback=steps.append)
    np.testing.assert_allclose(res.image, np.clip(target, 0, 1), atol=1e-4)
    assert res.evaluations == len(steps) <= 200 and res.image.dtype == np.float32
    assert [s.step for s in steps] == list(range(1, len(steps) + 1))
    # Never outside the bounds, at any evaluation (a constraint, not a clamp of the result).
    assert all(s.image.min() >= 0 and s.image.max() <= 1 for s in steps)


def test_float32_lbfgs_rolls_back_faults_and_stops_after_too_many() -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(0.1, 0.9, (1, 3, 6, 6)).astype(np.float32)
    base = quadratic(target, rng.uniform(0.01, 10, target.shape))
    calls = {"n": 0}

    def faulty(x: np.ndarray):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss, g, t = base(x)
        return (float("nan"), g, t) if calls["n"] in (4, 9) else (loss, g, t)

    res = lbfgs32(faulty, np.full(target.shape, 0.5, np.float32), 60)
    assert res.faults == 2 and res.error is None and np.isfinite(res.image).all()
    assert res.loss < base(np.full(target.shape, 0.5, np.float32))[0]
    always = lbfgs32(lambda x: (float("nan"), np.zeros_like(x), {}), np.full(target.shape, 0.5, np.float32), 60)
    assert always.error is not None and "5 faults" in always.error


def test_float32_lbfgs_hands_ctrl_c_back_with_the_best_image() -> None:
    target = np.full((1, 3, 4, 4), 0.8, np.float32)
    base = quadratic(target, np.ones_like(target))
    calls = {"n": 0}

    def interrupted(x: np.ndarray):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return base(x)

    with pytest.raises(Interrupted) as e:
        lbfgs32(interrupted, np.zeros_like(target), 50)
    assert e.value.partial.evaluations == 6 and e.value.partial.interrupted


def test_a_stall_upgrades_the_objective_once_and_the_run_goes_on() -> None:
    """bf16 gradients near a minimum: the line search fails; on_stall swaps in an exact objective."""
    rng = np.random.default_rng(2)
    target = rng.uniform(0.1, 0.9, (1, 3, 6, 6)).astype(np.float32)
    exact = quadratic(target, rng.uniform(0.5, 2, target.shape))
    state = {"exact": False, "calls": 0}

    def objective(x: np.ndarray):  # type: ignore[no-untyped-def]
        loss, g, t = exact(x)
        if not state["exact"]:
            g = -g  # a gradient so wrong that every line search along it fails
        return loss, g, t

    def upgrade() -> bool:
        state["calls"] += 1
        state["exact"] = True
        return True

    res = lbfgs32(objective, np.full(target.shape, 0.5, np.float32), 120, on_stall=upgrade)
    assert state["calls"] == 1 and state["exact"]
    np.testing.assert_allclose(res.image, target, atol=1e-3)


# ---- the shared driver: faults, Ctrl-C and the budget, the same for every optimizer ---------------
from onnxstyle.runtime.optimize import lbfgs_rounds, torch_lbfgs


def _valley(x: np.ndarray):  # type: ignore[no-untyped-def]
    """A Rosenbrock-like valley with its minimum (0.7, 0.49, ...) inside [0, 1]: not solved in 50."""
    x = x.astype(np.float64)
    a, b = x[..., :-1], x[..., 1:]
    loss = float((100 * (b - a * a) ** 2 + (0.7 - a) ** 2).sum())
    g = np.zeros_like(x)
    g[..., :-1] += -400 * a * (b - a * a) - 2 * (0.7 - a)
    g[..., 1:] += 200 * (b - a * a)
    return loss, g.astype(np.float32), {}


class _Recorder:
    """An objective that keeps every point it was asked for and its loss, and fails on cue:
    a NaN gradient at the evaluations in ``nan_at``, Ctrl-C at ``interrupt_at``."""

    def __init__(self, base, nan_at=(), interrupt_at: int | None = None) -> None:  # type: ignore[no-untyped-def]
        self.base, self.nan_at, self.interrupt_at = base, set(nan_at), interrupt_at
        self.points: list[np.ndarray] = []
        self.losses: list[float] = []

    def __call__(self, x: np.ndarray):  # type: ignore[no-untyped-def]
        n = len(self.points) + 1
        if n == self.interrupt_at:
            raise KeyboardInterrupt
        loss, g, t = self.base(x)
        self.points.append(np.array(x, np.float32))
        if n in self.nan_at:
            g = np.full_like(g, np.nan)
            self.losses.append(float("nan"))
        else:
            self.losses.append(loss)
        return loss, g, t

    def best(self, upto: int) -> tuple[np.ndarray, float]:
        """The best point among the first ``upto`` evaluations, faults left out, and its loss."""
        losses = [v if np.isfinite(v) else np.inf for v in self.losses[:upto]]
        i = int(np.argmin(losses))
        return self.points[i], losses[i]


# Each optimizer with its budget of ``n`` evaluations.
_RUNS = {
    "lbfgs-b": lambda f, x0, n, **k: lbfgs(f, x0, n, **k),
    "lbfgs32": lambda f, x0, n, **k: lbfgs32(f, x0, n, **k),
    "adam": lambda f, x0, n, **k: adam(f, x0, n, lr=0.05, **k),
    "torch-lbfgs": lambda f, x0, n, **k: torch_lbfgs(f, x0, n, **k),
    "keras-rounds": lambda f, x0, n, **k: lbfgs_rounds(f, x0, rounds=max(1, n // 10), maxfun=min(n, 10), **k),
}
_ROLLBACK = ["lbfgs-b", "lbfgs32", "adam", "torch-lbfgs"]  # keras-rounds has none: a fault ends it
_X0 = np.full((1, 3, 4, 6), 0.2, np.float32)


@pytest.mark.parametrize("name", _ROLLBACK)
def test_a_nan_mid_run_rolls_back_to_the_best_image_and_the_run_goes_on(name: str) -> None:
    f = _Recorder(_valley, nan_at=(6,))
    res = _RUNS[name](f, _X0, 40)
    best_before, loss_before = f.best(5)
    # The very next evaluation is at the best image before the fault: the rollback.
    np.testing.assert_array_equal(f.points[6], best_before)
    assert res.faults == 1 and res.error is None and res.stopped == "budget"
    # The run went on to spend its whole budget, and made progress after the fault.
    assert res.evaluations == len(f.points) == 40
    assert res.loss < loss_before
    # The result is the best point evaluated, never the faulty one.
    best, best_loss = f.best(40)
    assert res.loss == best_loss and np.isfinite(res.image).all()
    np.testing.assert_array_equal(res.image, np.clip(best, 0, 1))
    assert len(res.history) == 39 and not any(np.isnan(res.history))


def test_a_nan_ends_the_keras_rounds_with_the_best_image() -> None:
    f = _Recorder(_valley, nan_at=(6,))
    res = _RUNS["keras-rounds"](f, _X0, 40)
    best, best_loss = f.best(5)
    assert res.evaluations == len(f.points) == 6 and res.faults == 1
    assert res.error is not None and res.error.endswith("stopped") and res.stopped == "error"
    assert res.loss == best_loss
    np.testing.assert_array_equal(res.image, np.clip(best, 0, 1))


@pytest.mark.parametrize("name", _ROLLBACK)
def test_faults_up_to_max_faults_are_survived_and_one_more_stops(name: str) -> None:
    f = _Recorder(_valley, nan_at=(3, 8, 13))
    res = _RUNS[name](f, _X0, 30, max_faults=3)
    # The third fault is the last allowed: the run stops right there, keeping the best so far.
    assert res.faults == 3 and res.evaluations == len(f.points) == 13
    assert res.error is not None and "3 faults" in res.error and res.stopped == "error"
    best, best_loss = f.best(13)
    assert res.loss == best_loss
    np.testing.assert_array_equal(res.image, np.clip(best, 0, 1))


@pytest.mark.parametrize("name", list(_RUNS))
@pytest.mark.parametrize("at", [1, 9])
def test_ctrl_c_in_the_objective_leaves_as_interrupted_with_the_best_image(name: str, at: int) -> None:
    f = _Recorder(_valley, interrupt_at=at)
    with pytest.raises(Interrupted) as e:
        _RUNS[name](f, _X0, 40)
    partial = e.value.partial
    assert isinstance(e.value.cause, KeyboardInterrupt)
    assert partial.interrupted and partial.evaluations == len(f.points) == at - 1
    if at == 1:  # nothing evaluated yet: the starting image
        assert partial.loss == float("inf")
        np.testing.assert_array_equal(partial.image, _X0)
    else:
        best, best_loss = f.best(at - 1)
        assert partial.loss == best_loss
        np.testing.assert_array_equal(partial.image, np.clip(best, 0, 1))


@pytest.mark.parametrize("name", list(_RUNS))
@pytest.mark.parametrize("budget", [1, 2, 5, 17, 50])
@pytest.mark.parametrize("faults", [False, True])
def test_the_budget_is_never_exceeded(name: str, budget: int, faults: bool) -> None:
    if name == "keras-rounds":  # its budget is rounds × maxfun
        rounds, maxfun = (5, budget // 5) if budget % 5 == 0 else (1, budget)
        run = lambda f: lbfgs_rounds(f, _X0, rounds=rounds, maxfun=maxfun)
    else:
        run = lambda f: _RUNS[name](f, _X0, budget, max_faults=100)
    f = _Recorder(_valley, nan_at=range(4, 100, 4) if faults else ())
    res = run(f)
    assert len(f.points) <= budget and res.evaluations == len(f.points)
    if not faults or name != "keras-rounds":
        # The valley is not solved within 50 evaluations: each of them is spent.
        assert len(f.points) == budget


# ---- lbfgs32's step rules: "unit" (the default, torch's acceptance) and "armijo" ----------------
def _bumped(k: int, factor: float):  # type: ignore[no-untyped-def]
    """A well-conditioned quadratic whose k-th evaluation reports ``factor`` × the loss reported
    just before it (a rise), the gradient untouched; and the evaluated points."""
    rng = np.random.default_rng(3)
    target = rng.uniform(0.3, 0.7, (1, 3, 5, 5)).astype(np.float32)
    base = quadratic(target, rng.uniform(0.5, 2.0, target.shape))
    seen: list[np.ndarray] = []
    last = {"loss": 0.0}

    def f(x: np.ndarray):  # type: ignore[no-untyped-def]
        loss, g, t = base(x)
        seen.append(x.copy())
        if len(seen) == k:
            loss = factor * last["loss"]
        last["loss"] = loss
        return loss, g, t

    return f, seen


def _backtracked(seen: list[np.ndarray], k: int) -> bool:
    """Whether evaluation k + 1 lies on the segment from evaluation k - 1 to k (a shorter step
    along the same direction), as a backtracking search puts it."""
    p0, p1, p2 = (seen[i - 1].ravel().astype(np.float64) for i in (k - 1, k, k + 1))
    d = p1 - p0
    lam = float(np.dot(p2 - p0, d) / np.dot(d, d))
    return 0 < lam < 1 and float(np.linalg.norm(p2 - p0 - lam * d)) < 1e-5 * float(np.linalg.norm(d))


@pytest.mark.parametrize(("step", "factor", "backtracks"), [("unit", 1.5, False), ("unit", 3.0, True), ("armijo", 1.5, True)])
def test_unit_steps_keep_a_small_rise_and_back_off_a_big_one(step: str, factor: float, backtracks: bool) -> None:
    k = 5  # the memory holds pairs by then
    f, seen = _bumped(k, factor)
    res = lbfgs32(f, np.full((1, 3, 5, 5), 0.5, np.float32), 12, history=5, step=step)
    assert res.evaluations == 12 and len(seen) == 12
    assert _backtracked(seen, k) is backtracks


def test_unit_steps_near_a_bound_trade_exactness_for_speed_armijo_keeps_it() -> None:
    # ~5% of the variables want to leave [0, 1] (a style transfer has ~1-2% of its pixels on
    # a bound); the minimum is the target clipped. "unit" pairs the intended step of a
    # clipped pixel with no move (as torch's L-BFGS does): within 1e-3 of the way to the
    # minimum, not to it; "armijo" (the active set) reaches it.
    rng = np.random.default_rng(4)
    target = rng.uniform(0.05, 0.95, (1, 3, 16, 16)).astype(np.float32)
    out = rng.random(target.shape) < 0.05
    target[out] = rng.choice([-0.3, 1.3], int(out.sum()))
    f = quadratic(target, rng.uniform(0.1, 10, target.shape))
    x0 = np.full(target.shape, 0.5, np.float32)
    f0, fmin = f(x0)[0], f(np.clip(target, 0, 1))[0]
    unit = lbfgs32(f, x0, 300, history=10)
    assert 0 <= (unit.loss - fmin) / (f0 - fmin) < 1e-3
    assert unit.image.min() >= 0 and unit.image.max() <= 1
    exact = lbfgs32(f, x0, 300, history=10, step="armijo")
    np.testing.assert_allclose(exact.image, np.clip(target, 0, 1), atol=1e-5)


def test_the_step_rule_is_checked() -> None:
    from onnxstyle.runtime.settings import RunSettings

    with pytest.raises(ValueError, match="step"):
        lbfgs32(quadratic(np.zeros((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 2))), np.zeros((1, 1, 2, 2), np.float32), 3, step="wolfe")
    with pytest.raises(ValueError, match="lbfgs-step"):
        RunSettings(lbfgs_step="wolfe")
    assert RunSettings().lbfgs_step == "unit"
