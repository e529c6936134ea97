"""The plan of a run, made before anything of its size is allocated: stages, sizes, tiles,
optimizer state and the estimated peak memory of each stage, against a budget.

``stylize --dry-run`` prints it; every run follows it, and a run that cannot fit even in
tiles is refused up front with the figure and a way out, never started and then killed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from ..errors import ResourceError, SizeError
from ..spec import LossSpec
from .canvas import canvas_for
from .image_io import fit_longest, fit_size
from .memory import Estimate, estimate_stage
from .settings import RunSettings
from .tiling import TilePlan, halo_for, plan_tiles

# The smallest history kept when L-BFGS state must shrink to fit; below it, Adam.
MIN_HISTORY = 3


@dataclass(frozen=True)
class StagePlan:
    index: int
    size: int
    height: int
    width: int
    evaluations: int
    tiles: TilePlan | None  # None: the whole image in one pass
    optimizer: str
    history: int
    estimate: Estimate
    # Whether a stall at reduced precision may go on in fp32: its graphs need about twice the
    # memory (a tiled stage's fp32 tile graphs ~2.3 GB more at 2048 px in 1024 px tiles), so
    # only where that estimate fits the budget too.
    fp32_fallback: bool = True
    # The grid canvas (H, W) an untiled stage runs on (runtime/canvas.py); None: exactly hw.
    canvas: tuple[int, int] | None = None

    @property
    def tiled(self) -> bool:
        return self.tiles is not None


@dataclass(frozen=True)
class RunPlan:
    stages: tuple[StagePlan, ...]
    backend: str
    precision: str
    budget: int | None

    @property
    def peak(self) -> int:
        return max(s.estimate.total for s in self.stages)


def _stage(
    spec: LossSpec, index: int, size: int, hw: tuple[int, int], evaluations: int, s: RunSettings,
    backend: str, precision: str, budget: int | None, inputs: int | None, snap: bool = False,
) -> StagePlan:
    h, w = hw
    canvas = canvas_for(h, w) if snap else hw

    def est(tiles: TilePlan | None, optimizer: str, history: int, at: str = precision) -> Estimate:
        eh, ew = (h, w) if tiles else canvas
        return estimate_stage(spec, eh, ew, s, backend, at, tiles.largest if tiles else None, optimizer, history, inputs)

    def fits(e: Estimate) -> bool:
        return budget is None or e.total <= budget

    optimizer, history = s.optimizer, s.lbfgs_history
    tiles = None if s.tile in ("auto", "off") else plan_tiles(h, w, spec, int(s.tile))
    if s.tile == "auto" and not fits(est(None, optimizer, history)):
        # The largest tile that fits; if none does, the smallest, so the refusal is for the least.
        tiles = _auto_tiles(spec, h, w, lambda t: fits(est(t, optimizer, MIN_HISTORY if optimizer == "lbfgs" else history)))
        tiles = tiles or plan_tiles(h, w, spec, 4 * halo_for(spec)[1])
    # The optimizer's state grows with the image, not the tile: shrink L-BFGS's history to fit
    # (3 pairs still beat Adam per evaluation at our sizes), then fall back to Adam.
    if optimizer == "lbfgs":
        while history > MIN_HISTORY and not fits(est(tiles, optimizer, history)):
            history -= 1
        if not fits(est(tiles, optimizer, history)):
            optimizer = "adam"
    fallback = precision == "fp32" or fits(est(tiles, optimizer, history, "fp32"))
    snapped = canvas if canvas != hw and tiles is None else None
    return StagePlan(index, size, h, w, evaluations, tiles, optimizer, history, est(tiles, optimizer, history), fallback, snapped)


def _auto_tiles(spec: LossSpec, h: int, w: int, ok: Callable[[TilePlan], bool]) -> TilePlan | None:
    """The largest tile that fits (fewest tiles, least halo), from half the image down to
    four strides in steps of a fifth (halving would skip from 512 px tiles straight to 256, at
    2.7× the pixels per pass instead of 1.6×); None when none does."""
    _, stride = halo_for(spec)
    inner = -(-max(h, w) // 2 // stride) * stride
    while True:
        plan = plan_tiles(h, w, spec, inner)
        if ok(plan):
            return plan
        if inner <= 4 * stride:
            return None
        inner = max(4 * stride, inner * 4 // 5 // stride * stride)


def plan_run(
    spec: LossSpec, content_hw: tuple[int, int], settings: RunSettings, backend: str, precision: str, budget: int | None,
    inputs: int | None = None, snap: bool = False, styles: Sequence[tuple[int, int]] = (),
) -> RunPlan:
    """``inputs``: bytes of the run's inputs held whole (memory.inputs_bytes); None: a content
    and a square style at each stage's size. ``snap``: untiled stages run on the shape grid's
    canvases (runtime/canvas.py), for engines that compile per shape. ``styles``: the
    (height, width) of each style image, checked with the content by :func:`check_sizes`."""
    check_sizes(spec, content_hw, settings, styles)
    stages = []
    for i, (size, evaluations) in enumerate(settings.stages(), start=1):
        hw = fit_size(content_hw[0], content_hw[1], size, settings.fit)
        stages.append(_stage(spec, i, size, hw, evaluations, settings, backend, precision, budget, inputs, snap))
    return RunPlan(tuple(stages), backend, precision, budget)


def check_plan(plan: RunPlan) -> None:
    """Refuse a plan whose largest stage does not fit its budget, with the figure and a way out."""
    if plan.budget is None:
        return
    for st in plan.stages:
        if st.estimate.total > plan.budget:
            how = f"even in tiles of {st.tiles.inner} px" if st.tiles else "untiled"
            opt = st.estimate.parts.get("optimizer", 0)
            raise ResourceError(
                f"{st.width}x{st.height} needs about {st.estimate.total / 2**30:.1f} GiB {how} (its optimizer state alone "
                f"{opt / 2**30:.1f} GiB) but {plan.budget / 2**30:.1f} GiB is available to it (--max-memory); "
                f"use a smaller --size" + ("" if st.tiles else ", or --tile auto")
            )


def check_sizes(
    spec: LossSpec, content_hw: tuple[int, int], settings: RunSettings, styles: Sequence[tuple[int, int]] = (),
    masks: Sequence[tuple[int, int]] = (),
) -> None:
    """Refuse, before any engine loads, a run where the content or a style image would have a side
    under ``spec.min_side`` at any stage: the pools would leave nothing of it, and the engine would
    fail in its shape inference. A :class:`SizeError` (a ValueError: exit 2, HTTP 422) naming the
    input, the minimum and a --size that works.

    ``content_hw``/``styles``: (height, width) of the images as given (any size: only their
    aspect matters). ``masks`` are resized to the content's working size, so the content's check
    covers them; they are taken for the service's sake and need no check of their own.
    """
    del masks
    least = spec.min_side
    stages = settings.stages()
    for i, (size, _) in enumerate(stages, start=1):
        hw = fit_size(*content_hw, size, settings.fit)
        if min(hw) < least:
            _refuse(spec, settings, "content", content_hw, hw, i, size, lambda s, n: min(fit_size(*content_hw, n, s.fit)))
        for k, st in enumerate(styles, start=1):
            shw = fit_longest(*st, settings.style_side(size))
            if min(shw) < least:
                name = "style" if len(styles) == 1 else f"style {k}"
                _refuse(spec, settings, name, st, shw, i, size, lambda s, n, st=st: min(fit_longest(*st, s.style_side(n))))


def _refuse(
    spec: LossSpec, s: RunSettings, what: str, given: tuple[int, int], hw: tuple[int, int], stage: int, size: int,
    side_at: Callable[[RunSettings, int], int],
) -> NoReturn:
    """Raise the SizeError for ``what`` (given as ``given``, ``hw`` at ``stage``), with a way out."""
    least = spec.min_side
    at = f"stage {stage} ({size} px)" if len(s.stages()) > 1 else f"{size} px"
    pools = least.bit_length() - 1
    way = _way_out(s, lambda n: side_at(s, n) >= least)
    was = f"{what} {given[1]}x{given[0]}" if tuple(given) != tuple(hw) else what
    raise SizeError(
        f"{was} would be {hw[1]}x{hw[0]} at {at}, a side under {least} px, the least the network "
        f"takes ({spec.deepest} is {pools} pools deep); {way}"
        + (" or a larger --style-scale" if what.startswith("style") else "")
    )


def _way_out(s: RunSettings, ok: Callable[[int], bool]) -> str:
    """The way out, as a --size that works (or --scales where no --size does): from the least
    stage size that passes ``ok`` (which rises with the size)."""
    n = 32
    while not ok(n):
        if n >= 2**24:  # a sliver no size can save: say so without a figure
            return "use a larger --size"
        n *= 2
    lo = n // 2  # failed, or under 32: bisect down to the least size that passes
    while lo + 1 < n:
        mid = (lo + n) // 2
        lo, n = (lo, mid) if ok(mid) else (mid, n)
    if n > 2**15:
        return f"no practical size reaches it (the longest side would need {n} px)"
    if s.scales:
        return f"start --scales at {n} px or more"
    # Every stage must reach n: one stage at n, or a half-size first stage at 2n (coarse-to-fine);
    # the stage sizes are rounded, so a few px more are tried too.
    for size in (*range(max(32, n), max(32, n) + 9), *range(2 * n, 2 * n + 17)):
        if min(st for st, _ in s.replace(size=size).stages()) >= n:
            return f"use a larger --size ({size} works)"
    # A schedule whose coarse stages stay small whatever the size (a pyramid from a fixed start).
    return f"use --scales with every stage at {n} px or more (e.g. --scales {max(n, s.size)})"
