"""The stop rule and the default resolution pyramid, on synthetic objectives (no graphs, no timing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxstyle.runtime.optimize import LbfgsMemory, StopRule, lbfgs32
from onnxstyle.runtime.settings import FIXED_ITERATIONS, STOP_TOL, STOP_TOL_COARSE, STOP_WINDOW, RunSettings, pyramid_sizes


def quadratic(target: np.ndarray, scale: np.ndarray):  # type: ignore[no-untyped-def]
    def f(x: np.ndarray):  # type: ignore[no-untyped-def]
        d = x - target
        return float((scale * d * d).sum()), (2 * scale * d).astype(np.float32), {}

    return f


def rosenbrock(x: np.ndarray):  # type: ignore[no-untyped-def]
    """A Rosenbrock valley in [0,1] (its minimum, all ones, is on the bound), plus 1 so that
    relative improvements are measured against a loss that does not go to zero."""
    a, b = x[..., :-1].astype(np.float64), x[..., 1:].astype(np.float64)
    loss = float((100 * (b - a * a) ** 2 + (1 - a) ** 2).sum()) + 1.0
    g = np.zeros_like(x, dtype=np.float64)
    g[..., :-1] += -400 * a * (b - a * a) - 2 * (1 - a)
    g[..., 1:] += 200 * (b - a * a)
    return loss, g.astype(np.float32), {}


def slow_descent(rate: float):  # type: ignore[no-untyped-def]
    """An objective whose loss falls by ``rate`` (relative) at every evaluation, whatever x is:
    a run that is still improving, by a known amount, for as long as it runs."""
    calls = {"n": 0}

    def f(x: np.ndarray):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return 1e3 * (1 - rate) ** calls["n"], np.full_like(x, 1e-3), {}

    return f


# ---------------------------------------------------------------- the stop rule


def test_the_rule_compares_the_best_loss_over_its_window() -> None:
    rule = StopRule(window=3, tol=0.01)
    assert not rule.converged([10.0, 9.0, 8.0])  # not a whole window yet
    assert not rule.converged([10.0, 9.0, 8.0, 7.0])  # 30% over the window
    assert rule.converged([10.0, 10.0, 10.0, 9.95])  # 0.5% < 1%
    assert not StopRule(window=0, tol=0.01).converged([1.0] * 50)  # disabled
    assert not StopRule(window=3, tol=0.0).converged([1.0] * 50)
    assert not StopRule(window=3, tol=0.01, min_evaluations=10).converged([1.0] * 5)


def test_a_converged_quadratic_stops_early() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(0.1, 0.9, (1, 3, 8, 8)).astype(np.float32)
    # An offset: the minimum's loss is 1, so the relative improvement goes to zero there.
    base = quadratic(target, rng.uniform(0.5, 2.0, target.shape))

    def f(x: np.ndarray):  # type: ignore[no-untyped-def]
        loss, g, t = base(x)
        return loss + 1.0, g, t

    x0 = np.full(target.shape, 0.5, np.float32)
    capped = lbfgs32(f, x0, 400, stop=None)
    res = lbfgs32(f, x0, 400, stop=StopRule(window=10, tol=1e-4))
    assert res.stopped == "converged"
    assert res.evaluations < 200 < 400
    assert res.loss == pytest.approx(1.0, abs=1e-3)
    assert res.loss <= capped.loss * (1 + 1e-3)
    # The window really had flattened out when it stopped.
    best = np.minimum.accumulate(res.history)
    assert best[-11] - best[-1] < 1e-4 * best[-11]


def test_a_rosenbrock_valley_stops_once_flat_and_not_before() -> None:
    x0 = np.zeros((1, 1, 4, 6), np.float32)
    rule = StopRule(window=15, tol=1e-3)
    res = lbfgs32(rosenbrock, x0, 2000, stop=rule)
    assert res.stopped == "converged" and res.evaluations < 2000
    best = list(np.minimum.accumulate(res.history))
    # No earlier evaluation would have stopped it: the rule fired at its first chance.
    assert not any(rule.converged(best[:n]) for n in range(1, len(best)))
    assert rule.converged(best)


@pytest.mark.parametrize("rate", [0.003, 0.01])
def test_a_run_still_improving_by_more_than_the_threshold_is_never_stopped(rate: float) -> None:
    # Over a window of 20 the best loss falls by 1 - (1 - rate)^20 ≥ 5.8% > tol 0.5%.
    res = lbfgs32(slow_descent(rate), np.full((1, 3, 4, 4), 0.5, np.float32), 150, stop=StopRule(window=20, tol=5e-3))
    assert res.evaluations == 150 and res.stopped == "budget"


def test_the_budget_caps_a_run_the_rule_would_let_go_on() -> None:
    res = lbfgs32(rosenbrock, np.zeros((1, 1, 4, 6), np.float32), 25, stop=StopRule(window=15, tol=1e-9))
    assert res.evaluations == 25 and res.stopped == "budget"


def test_a_precision_switch_restarts_the_window() -> None:
    # After the switch the losses are another objective's: a window spanning it means nothing.
    state = {"exact": False}
    f = slow_descent(0.01)

    def objective(x: np.ndarray):  # type: ignore[no-untyped-def]
        loss, g, t = f(x)
        return (loss * 2 if not state["exact"] else loss), g, t

    def upgrade() -> bool:
        state["exact"] = True
        return True

    res = lbfgs32(objective, np.full((1, 3, 4, 4), 0.5, np.float32), 120, on_stall=upgrade, patience=5, stop=StopRule(10, 5e-3))
    assert res.evaluations == 120 and res.stopped == "budget"


# ---------------------------------------------------------------- the pyramid


@pytest.mark.parametrize("size", [256, 384, 512, 768, 1024, 2048])
def test_pyramid_sizes_rise_by_root_two_to_the_size(size: int) -> None:
    sizes = pyramid_sizes(size, 128)
    assert sizes[-1] == size and sizes == sorted(set(sizes))
    assert all(n % 8 == 0 for n in sizes[:-1])
    assert 128 / 2**0.25 <= sizes[0] <= 128 * 2**0.25
    for a, b in zip(sizes, sizes[1:]):
        assert b / a == pytest.approx(math.sqrt(2), rel=0.04)


def test_the_default_stages_are_the_pyramid() -> None:
    s = RunSettings(size=512)
    assert s.pyramid
    assert s.stages() == [(128, 20), (184, 20), (256, 20), (360, 20), (512, 250)]
    assert [n for n, _ in RunSettings(size=1024).stages()] == [128, 184, 256, 360, 512, 728, 1024]
    assert RunSettings(size=1024).stages()[-1] == (1024, 250)
    assert RunSettings(size=96).stages() == [(96, 250)]  # nothing coarser is worth a stage
    custom = RunSettings(size=512, pyramid_start=256, pyramid_coarse_iterations=50, pyramid_final_iterations=80)
    assert custom.stages() == [(256, 50), (360, 50), (512, 80)]
    # The work (pixels × evaluations, in output-size evaluations) at the caps is under the old
    # fixed schedule's, at 512 px (300) and at 1024 px ((512, 150) → (1024, 300): 337.5).
    for size, old in ((512, 300), (1024, 337.5)):
        work = sum((n / size) ** 2 * k for n, k in RunSettings(size=size).stages())
        assert work < 0.95 * old


def test_explicit_iterations_or_scales_keep_the_fixed_schedule() -> None:
    assert RunSettings(size=512, iterations=300).stages() == [(512, 300)]
    assert RunSettings(size=1024, iterations=300).stages() == [(512, 150), (1024, 300)]
    assert RunSettings(size=1024, scales=(256, 1024)).stages() == [(256, FIXED_ITERATIONS), (1024, FIXED_ITERATIONS)]
    for s in (RunSettings(iterations=300), RunSettings(scales=(256, 512))):
        assert not s.pyramid and s.carry_mode() == "none"
        assert s.stop_rule(1, 2) == (0, 0.0) and s.stop_rule(2, 2) == (0, 0.0)


def test_the_stop_rule_per_stage() -> None:
    s = RunSettings(size=512)
    assert [s.stop_rule(i, 5) for i in range(1, 6)] == [(STOP_WINDOW, STOP_TOL_COARSE)] * 4 + [(STOP_WINDOW, STOP_TOL)]
    assert RunSettings(stop_tol=0).stop_rule(5, 5) == (0, 0.0)
    assert RunSettings(stop_window=0).stop_rule(5, 5) == (0, 0.0)
    # Given explicitly, the rule acts on a fixed schedule too, its count being the cap.
    assert RunSettings(iterations=1000, stop_tol=1e-3).stop_rule(1, 1) == (STOP_WINDOW, 1e-3)
    assert RunSettings(iterations=1000, stop_window=30).stop_rule(1, 1) == (30, STOP_TOL)
    with pytest.raises(ValueError):
        RunSettings(stop_tol=-1)
    with pytest.raises(ValueError):
        RunSettings(carry="everything")


# ---------------------------------------------------------------- state carried across stages


def _memory(n: int, h: int, w: int, pairs: int = 3) -> LbfgsMemory:
    rng = np.random.default_rng(0)
    mem = LbfgsMemory(10)
    for _ in range(pairs):
        s = rng.normal(size=3 * h * w).astype(np.float32)
        mem.add(s, (2.0 / n) * s + rng.normal(scale=0.01 / n, size=s.size).astype(np.float32))
    return mem


def test_the_scale_is_carried_in_proportion_to_the_pixels() -> None:
    mem = _memory(16, 4, 4)
    out = mem.carried(5, ratio=2.0)
    assert out.scaled and not out.s and out.size == 5
    assert out.gamma == pytest.approx(2.0 * mem.gamma)


def test_pairs_are_resampled_with_their_curvature_kept() -> None:
    mem = _memory(16, 4, 4)

    def up(v: np.ndarray) -> np.ndarray:  # nearest neighbour, 4x4 → 8x8: 4× the pixels
        return np.repeat(np.repeat(v.reshape(3, 4, 4), 2, axis=1), 2, axis=2).ravel()

    out = mem.carried(2, ratio=4.0, resample=up)
    assert len(out.s) == 2 and out.s[0].size == 3 * 64  # the newest two of three, at the new size
    for s_old, y_old, s_new, y_new in zip(mem.s[1:], mem.y[1:], out.s, out.y):
        # sᵀy kept (4× the terms, each y a quarter), yᵀy a quarter: γ grows 4×.
        assert float(s_new @ y_new) == pytest.approx(float(s_old @ y_old), rel=1e-5)
    assert out.gamma == pytest.approx(4.0 * mem.gamma, rel=1e-5)


def test_a_carried_memory_starts_the_next_run_and_comes_back() -> None:
    rng = np.random.default_rng(2)
    target = rng.uniform(0.1, 0.9, (1, 3, 6, 6)).astype(np.float32)
    f = quadratic(target, rng.uniform(0.05, 20.0, target.shape))  # ill-conditioned: memory matters
    first = lbfgs32(f, np.full(target.shape, 0.5, np.float32), 10, history=5)
    assert first.memory is not None and first.memory.s
    carried = first.memory.carried(5, 1.0, resample=lambda v: v.copy())
    warm = lbfgs32(f, first.image, 4, history=5, memory=carried)
    cold = lbfgs32(f, first.image, 4, history=5)
    assert warm.memory is carried  # the same object, updated in place
    assert warm.loss <= cold.loss


def test_the_run_carries_pairs_between_stages_and_the_scale_where_they_would_not_line_up() -> None:
    from types import SimpleNamespace

    from onnxstyle.runtime.stylizer import _carried
    from onnxstyle.runtime.canvas import Canvas

    mem = _memory(16, 4, 4)  # a 4x4 stage's memory; the next stage is 8x8
    stage = SimpleNamespace(optimizer="lbfgs", history=10, tiled=False)
    exact = Canvas((8, 8), (8, 8))
    pairs = _carried(mem, "pairs", stage, (1, 3, 4, 4), exact)  # type: ignore[arg-type]
    assert pairs is not None and len(pairs.s) == 3 and pairs.s[0].shape == (3 * 64,)
    assert pairs.gamma == pytest.approx(4 * mem.gamma, rel=0.05)
    scale = _carried(mem, "scale", stage, (1, 3, 4, 4), exact)  # type: ignore[arg-type]
    assert scale is not None and not scale.s and scale.gamma == pytest.approx(4 * mem.gamma)
    snapped = _carried(mem, "pairs", stage, (1, 3, 4, 4), Canvas((8, 8), (8, 12)))  # type: ignore[arg-type]
    assert snapped is not None and not snapped.s and snapped.gamma == pytest.approx(6 * mem.gamma)
    assert _carried(mem, "none", stage, (1, 3, 4, 4), exact) is None  # type: ignore[arg-type]
    adam = SimpleNamespace(optimizer="adam", history=10, tiled=False)
    assert _carried(mem, "pairs", adam, (1, 3, 4, 4), exact) is None  # type: ignore[arg-type]
    assert RunSettings().carry_mode() == "pairs" and RunSettings(carry="scale").carry_mode() == "scale"
