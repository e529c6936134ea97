"""The stylization API over one models folder: a warm :class:`Stylizer`, and ``stylize``.

Arrays in, arrays out. Finding or making a models folder is not done here (see
:mod:`onnxstyle.autoexport`): the runtime runs what it is given, torch-free.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import Interrupted, ModelsError
from .colour import luminance_image, match_histogram, match_luminance, recombine_luminance
from ..exportdir import FEATURES, LOSS_GRAD, TILE_GRAD
from .canvas import Canvas
from .engine import Engine, TileGrad, no_temporal
from .image_io import fit_longest, from_nchw, resize_to, to_nchw
from .memory import default_budget, inputs_bytes
from .optimize import Iterate, LbfgsMemory, Objective, Result, StopRule, adam, lbfgs, lbfgs32, lbfgs_rounds, torch_lbfgs
from .plan import RunPlan, StagePlan, check_plan, plan_run
from .tiling import TiledObjective, TileProgress, plan_tiles, tiled_features
from .settings import EngineConfig, RunSettings

ObjectiveHook = Callable[[np.ndarray, float, np.ndarray], tuple[float, np.ndarray]]


def blend_weights(n: int, blend: Sequence[float] | None) -> np.ndarray:
    if blend is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(blend, np.float64)
    if len(w) != n:
        raise ValueError(f"--style-blend has {len(w)} weights for {n} style images")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("--style-blend weights must be non-negative and not all zero")
    return w / w.sum()


class Stylizer:
    """Keeps one export's sessions warm across many images; each run takes its own settings."""

    def __init__(self, models: Path, config: EngineConfig | None = None, fix_hint: str = "onnxstyle export") -> None:
        self.engine = Engine(Path(models), config, fix_hint)
        self._exact: Engine | None = None

    def targets(
        self, content: np.ndarray, styles: Sequence[np.ndarray], settings: RunSettings, side: int | None = None, regions: int = 0,
        canvas: Canvas | None = None,
    ) -> dict[str, np.ndarray]:
        """Content features of ``content`` and the Gram matrices of ``styles``.

        ``regions`` = 0: one Gram per layer, the styles blended (``style_blend``), for an
        old plain export; 1: the blend as the single region of a guided export ([1,C,C]);
        R > 1: one region per style image ([R,C,C]), for ``masks``.
        """
        canvas = canvas or Canvas(content.shape[:2], content.shape[:2])
        # With the shape grid on, the photos' and styles' shapes vary from run to run: the
        # features graph runs dynamic (one compile for all); the loss graph gets the canvas.
        dynamic = settings.shape_grid
        ct = self.engine.features(canvas.pad(to_nchw(content)), dynamic=dynamic)
        targets = {k: v for k, v in ct.items() if k.startswith("content_")}
        features = functools.partial(self.engine.features, dynamic=dynamic)
        targets.update(_style_targets(styles, settings.style_side(side), features, regions, settings.style_blend))
        return {k: np.ascontiguousarray(v, np.float32) for k, v in targets.items()}

    def initial(self, content: np.ndarray, styles: Sequence[np.ndarray], settings: RunSettings, init_image: np.ndarray | None) -> np.ndarray:
        h, w = content.shape[:2]
        if init_image is not None:
            return to_nchw(resize_to(init_image, h, w))
        if settings.init == "content":
            return to_nchw(content)
        if settings.init == "style":
            return to_nchw(resize_to(styles[0], h, w))
        if settings.init == "noise":
            rng = np.random.default_rng(settings.seed)
            return rng.uniform(0.0, 1.0, (1, 3, h, w)).astype(np.float32)
        raise ValueError("init 'image' needs an init image")

    def run(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        settings: RunSettings | None = None,
        callback: Callable[[Iterate], None] | None = None,
        init_image: np.ndarray | None = None,
        masks: Sequence[np.ndarray] | None = None,
        objective_hook: ObjectiveHook | None = None,
        temporal: tuple[np.ndarray, np.ndarray] | None = None,
        on_tile: TileProgress | None = None,
    ) -> Result:
        """Optimize an image; content/styles are RGB float32 HxWx3 in [0,1], any size.

        ``masks``: greyscale HxW in [0,1] (any size, resized to the content). One mask:
        white is stylized, black keeps the content; one per style: each style in its region.
        ``temporal``: (target RGB HxWx3, weight map HxW in [0,1]) for video: the previous
        stylized frame warped to this one, and where that warp is reliable.
        ``on_tile(pass, tile, tiles)``: progress inside one evaluation of a tiled stage.
        Ctrl-C raises :class:`Interrupted` carrying the best result so far.
        """
        s = settings or RunSettings()
        if temporal is not None:
            s = s.replace(shape_grid=False)  # a video's frames share one shape already
        masks = list(masks) if masks else []
        self._check_inputs(styles, masks)
        plan = self._checked_plan(content, styles, masks, init_image is not None, s)

        # Colour (Gatys et al. 2017): optimize luminance only, or recolour the styles first.
        work_content = content
        if s.preserve_color == "luminance":
            styles = [match_luminance(st, content) for st in styles]
            work_content = luminance_image(content)
        elif s.preserve_color == "histogram":
            styles = [match_histogram(st, content) for st in styles]

        total = s.total_evaluations()
        results: list[Result] = []
        x = None
        memory: LbfgsMemory | None = None  # the previous stage's L-BFGS state (s.carry_mode())
        try:
            for stage in plan.stages:
                hw = (stage.height, stage.width)
                canvas = Canvas(hw, stage.canvas or hw)
                c = resize_to(work_content, *hw)
                # Each stage starts from the previous result, upsampled (coarse-to-fine).
                x0 = self.initial(c, styles, s, init_image) if x is None else to_nchw(resize_to(from_nchw(x), *hw))
                objective = self._stage_objective(stage, c, styles, s, masks, temporal, objective_hook, on_tile, canvas)
                offset = sum(r.evaluations for r in results)
                cb = _staged(callback, offset, total, stage.index, len(plan.stages), canvas)
                optimize = s.replace(optimizer=stage.optimizer, lbfgs_history=stage.history)
                window, tol = s.stop_rule(stage.index, len(plan.stages))
                stop = StopRule(window, tol) if window else None
                start = _carried(memory, s.carry_mode(), stage, results[-1].image.shape if results else None, canvas) if memory else None
                memory = None  # the coarse pairs go before this stage allocates: its estimate has only its own
                try:
                    r = self._optimize(optimize, canvas.pad(x0), stage.evaluations, objective, cb, stop, start)
                except Interrupted as e:
                    if isinstance(e.partial, Result):
                        e.partial.image = canvas.crop(e.partial.image)
                    raise
                r.image = canvas.crop(r.image)
                # Held here only until the next stage takes it (and not at all without a carry).
                memory, r.memory = (r.memory if s.carry_mode() != "none" else None), None
                results.append(r)
                x = r.image
                if r.error:
                    break
        except Interrupted as e:
            if isinstance(e.partial, Result):
                results.append(e.partial)
            partial = self._finish(results, s, content) if results else None
            raise Interrupted(partial, e.cause) from e.cause
        except KeyboardInterrupt as e:  # before the first evaluation of a stage
            raise Interrupted(self._finish(results, s, content) if results else None, e) from e
        return self._finish(results, s, content)

    def _checked_plan(self, content: np.ndarray, styles: Sequence[np.ndarray], masks: list[np.ndarray], init: bool, s: RunSettings) -> RunPlan:
        """The run's plan, refused if it cannot fit; the models check right after it (a size the
        plan refuses compiles nothing), and the plan again if auto precision fell back to fp32."""
        held = inputs_bytes(content.shape[:2], [st.shape[:2] for st in styles], [m.shape[:2] for m in masks], init, s.preserve_color)
        for _ in range(2):
            plan = self.plan(content.shape[:2], s, held, [st.shape[:2] for st in styles])
            check_plan(plan)
            before = self.engine.choice.precision
            self.engine.self_check()
            if self.engine.choice.precision == before:
                break
        return plan

    def plan(
        self, content_hw: tuple[int, int], settings: RunSettings, inputs: int | None = None, styles: Sequence[tuple[int, int]] = ()
    ) -> RunPlan:
        """Stages, tiles, optimizer state and estimated peak memory, before anything is allocated;
        ``inputs``: bytes of the inputs the run holds whole (memory.inputs_bytes); ``styles``: the
        style images' (height, width), refused with the content if too thin for the network."""
        s = settings
        if s.tile != "off" and not self.engine.manifest.has(TILE_GRAD):
            if s.tile != "auto":
                raise ModelsError(f"{self.engine.folder} has no tile graph for --tile; re-export with: {self.engine.fix_hint}")
            s = s.replace(tile="off")  # an older export: untiled, refused up front if too large
        budget = s.max_memory if s.max_memory is not None else default_budget()
        choice = self.engine.choice
        snap = s.shape_grid and choice.per_shape
        return plan_run(self.engine.manifest.spec, content_hw, s, choice.backend, choice.precision, budget, inputs, snap, styles)

    def _stage_objective(
        self, stage: StagePlan, content: np.ndarray, styles: Sequence[np.ndarray], s: RunSettings, masks: list[np.ndarray],
        temporal: tuple[np.ndarray, np.ndarray] | None, hook: ObjectiveHook | None, on_tile: TileProgress | None, canvas: Canvas,
    ) -> Objective:
        hw = (stage.height, stage.width)
        regions = (len(masks) if len(masks) > 1 else 1) if self.engine.guided else 0
        if stage.tiles is None:
            targets = self.targets(content, styles, s, side=stage.size, regions=regions, canvas=canvas)
            if self.engine.guided:
                targets["guide"] = canvas.pad(_guide(masks, hw), mirror=False)
            targets.update(self._temporal(temporal, canvas.canvas))  # snapped only without one
            # The targets exist: the features graph's session is not needed while optimizing.
            self.engine.release(FEATURES)
            s = self._canvas_weights(s, canvas)
            return self._fallback(lambda engine: self._objective(targets, s, hook, engine), stage.fp32_fallback)
        return self._tiled_objective(stage, content, styles, s, masks, temporal, hook, on_tile, regions)

    def _canvas_weights(self, s: RunSettings, canvas: Canvas) -> RunSettings:
        """On a grid canvas, the terms averaged over the canvas weigh canvas/photo area more, so
        that against the style (measured on the photo alone) they balance as at the exact size."""
        if not canvas.snapped:
            return s
        spec = self.engine.manifest.spec
        averaged = [k for k, on in (("content_weight", spec.content_reduction == "mean"), ("tv_weight", spec.tv == "mean_sq")) if on]
        given = {k: getattr(s, k) for k in averaged}
        return s.replace(**{k: (self.engine.weight_defaults[k] if v is None else v) * canvas.area_ratio for k, v in given.items()})

    def _fallback(self, make: Callable[[Engine], Objective], allowed: bool = True) -> Objective:
        """A bf16 engine's objective that can become fp32 when the optimizer stalls on it, where
        the plan says fp32 fits the budget (else a stall is an ordinary L-BFGS restart)."""
        if self.engine.choice.precision != "bf16" or not allowed:
            return make(self.engine)
        return PrecisionFallback(make, self.engine, self._exact_engine)

    def _exact_engine(self) -> Engine:
        """The same backend at fp32, built on first need (one stall in a run is typical of none)."""
        if self._exact is None:
            self._exact = Engine(self.engine.folder, self.engine.config.replace(precision="fp32"), self.engine.fix_hint)
        # The engine's own graphs will not be used again in this stage: the plan's fp32 estimate
        # assumes they are gone (its features graph's fp32 copy, for targets, stays).
        for graph in (LOSS_GRAD, TILE_GRAD):
            self.engine.release(graph)
        self.engine.release(FEATURES, precision=self.engine.choice.precision)
        return self._exact

    def _tiled_objective(
        self, stage: StagePlan, content: np.ndarray, styles: Sequence[np.ndarray], s: RunSettings, masks: list[np.ndarray],
        temporal: tuple[np.ndarray, np.ndarray] | None, hook: ObjectiveHook | None, on_tile: TileProgress | None, regions: int,
    ) -> Objective:
        spec, plan = self.engine.manifest.spec, stage.tiles
        assert plan is not None
        # What earlier stages compiled goes first: the whole-image loss graph of an untiled stage
        # (its static buffers held 1.1 GB into the showcase's 2048 px tiled stage) and the
        # dynamic-shape graphs, which keep the buffers of the largest tile they have run.
        for engine in (self.engine, self._exact):
            if engine is not None:
                for graph in (LOSS_GRAD, TILE_GRAD, FEATURES):
                    engine.release(graph)
        # An fp32 engine an earlier stage fell back to goes whole (rebuilt if this stage may
        # and does fall back): what its backend keeps beside the graphs is not in this
        # stage's estimate.
        self._exact = None

        def features(im: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
            return self.engine.features(im, g, dynamic=True)

        def style_features(img: np.ndarray) -> dict[str, np.ndarray]:
            tiles = plan_tiles(img.shape[2], img.shape[3], spec, plan.inner)
            return tiled_features(spec, tiles, features, img, progress=on_tile, maps=False)

        targets = tiled_features(spec, plan, features, to_nchw(content), progress=on_tile)
        targets = {k: v for k, v in targets.items() if k.startswith("content_")}
        targets.update(_style_targets(styles, s.style_side(stage.size), style_features, regions, s.style_blend))
        if self.engine.choice.precision != "fp32":
            # The tiles' own passes run at the engine's precision; the fp32 copy that made the
            # targets held 300 MiB at 2048 px in 512 px tiles.
            self.engine.release(FEATURES, precision="fp32")
        weights = {**self.engine.weight_defaults, **s.weights()}
        guide = _guide(masks, (stage.height, stage.width)) if masks else None
        temp = self._temporal(temporal, (stage.height, stage.width)) if temporal is not None else None
        temp_pair = (temp["temporal_target"], temp["temporal_map"]) if temp else None

        def make(engine: Engine) -> Objective:
            tobj = TiledObjective(
                spec, plan, lambda im, g: engine.features(im, g, exact=False, dynamic=True), TileGrad(engine), targets, weights, guide, temp_pair, on_tile
            )
            return _hooked(tobj, hook)

        return self._fallback(make, stage.fp32_fallback)

    def _old_export(self, without: str) -> ModelsError:
        e = self.engine
        version = e.manifest.version
        return ModelsError(f"{e.folder} is an export of format version {version}, without {without}; re-export with: {e.fix_hint}")

    def _temporal(self, temporal: tuple[np.ndarray, np.ndarray] | None, hw: tuple[int, int]) -> dict[str, np.ndarray]:
        if not self.engine.temporal:
            if temporal is not None:
                raise self._old_export("the temporal term for video")
            return {}
        if temporal is None:
            return no_temporal(*hw)
        target, weight = temporal
        return {
            "temporal_target": to_nchw(resize_to(np.asarray(target, np.float32), *hw)),
            "temporal_map": resize_to(np.asarray(weight, np.float32), *hw)[None, None].astype(np.float32),
        }

    def _check_inputs(self, styles: Sequence[np.ndarray], masks: list[np.ndarray]) -> None:
        if not styles:
            raise ValueError("at least one style image is needed")
        if len(masks) > 1 and len(masks) != len(styles):
            raise ValueError(f"--masks has {len(masks)} masks for {len(styles)} style images")
        if masks and not self.engine.guided:
            raise self._old_export("guided graphs for masks")

    def _finish(self, results: list[Result], s: RunSettings, content: np.ndarray) -> Result:
        """One result for all stages: the last stage's image (its content chroma put back)."""
        last = results[-1]
        image = last.image
        if s.preserve_color == "luminance":
            image = to_nchw(recombine_luminance(from_nchw(image), resize_to(content, image.shape[2], image.shape[3])))
        return Result(
            image,
            last.loss,
            last.terms,
            sum(r.evaluations for r in results),
            sum(r.elapsed for r in results),
            any(r.interrupted for r in results),
            sum(r.faults for r in results),
            [v for r in results for v in r.history],
            last.error,
            _first_switch(results),
        )

    def _objective(self, targets: dict[str, np.ndarray], s: RunSettings, hook: ObjectiveHook | None, engine: Engine) -> Objective:
        weights = s.weights()

        def objective(x: np.ndarray) -> tuple[float, np.ndarray, dict[str, float]]:
            r = engine.loss_grad(x, targets, weights)
            return r.loss, r.grad, r.terms

        return _hooked(objective, hook)

    def _optimize(
        self, s: RunSettings, x0: np.ndarray, evaluations: int, objective: Objective, cb: Callable[[Iterate], None] | None,
        stop: StopRule | None = None, memory: LbfgsMemory | None = None,
    ) -> Result:
        """One stage's optimization; ``stop`` and ``memory`` (carried state) act on ``lbfgs`` only."""
        if s.optimizer == "lbfgs":
            fb = objective if isinstance(objective, PrecisionFallback) else None
            try:
                r = lbfgs32(
                    objective, x0, evaluations, history=s.lbfgs_history, callback=cb, on_stall=fb.upgrade if fb else None,
                    stop=stop, memory=memory, step=s.lbfgs_step,
                )
            except Interrupted as e:
                if fb is not None and isinstance(e.partial, Result):
                    e.partial.precision_switch = fb.switched_at
                raise
            if fb is not None:
                r.precision_switch = fb.switched_at
            return r
        if s.optimizer == "lbfgs-b":
            return lbfgs(objective, x0, evaluations, history=s.lbfgs_history, callback=cb)
        if s.optimizer == "adam":
            return adam(
                objective, x0, evaluations, lr=s.adam_lr, betas=s.adam_betas, eps=s.adam_eps,
                tf_epsilon=s.adam_tf_epsilon, callback=cb,
            )
        if s.optimizer == "torch-lbfgs":
            return torch_lbfgs(objective, x0, evaluations, history=s.lbfgs_history, callback=cb)
        per_round = max(1, evaluations // max(1, s.rounds))
        return lbfgs_rounds(objective, x0, s.rounds, per_round, history=s.lbfgs_history, callback=cb)


def _carried(
    memory: LbfgsMemory, mode: str, stage: StagePlan, previous: tuple[int, ...] | None, canvas: Canvas,
) -> LbfgsMemory | None:
    """The previous stage's L-BFGS memory for this one (RunSettings.carry): its pairs resampled
    to this stage's shape, or its inverse-Hessian scale only.

    Only the scale where the pairs would not line up: a grid canvas pads the photo by a
    different share at each size, and a tiled stage's state is budgeted by the plan (its
    history may have shrunk; the scale costs nothing).
    """
    if mode == "none" or stage.optimizer != "lbfgs" or previous is None or not memory.scaled:
        return None
    old = (memory.s[0].size // 3) if memory.s else previous[2] * previous[3]
    h, w = canvas.canvas
    ratio = (h * w) / max(1, old)
    if mode == "scale" or canvas.snapped or stage.tiled or not memory.s or memory.s[0].size != 3 * previous[2] * previous[3]:
        return memory.carried(stage.history, ratio)
    ph, pw = previous[2], previous[3]

    def resample(v: np.ndarray) -> np.ndarray:
        # Unclipped: a step and a gradient change are signed.
        plane = resize_to(np.ascontiguousarray(v.reshape(3, ph, pw).transpose(1, 2, 0)), h, w, clip=False)
        return np.ascontiguousarray(plane.transpose(2, 0, 1), np.float32).ravel()

    return memory.carried(stage.history, ratio, resample)


def _first_switch(results: list[Result]) -> int | None:
    """The run-wide evaluation at which a stage first went on in fp32."""
    starts = itertools.accumulate((r.evaluations for r in results), initial=0)
    return next((start + r.precision_switch for start, r in zip(starts, results) if r.precision_switch is not None), None)


class PrecisionFallback:
    """bf16 gradients while they make progress, fp32 for the rest of the stage once they stop.

    A bf16 gradient is close to the fp32 one (cosine 0.995-0.996 at 256-512 px): L-BFGS
    makes the same progress per evaluation at twice the speed, until near a minimum the
    rounding of the loss and gradient can stall its line search. When the optimizer reports
    a stall, the same objective is rebuilt on an fp32 engine (benchmarks/precision.py).
    """

    def __init__(self, make: Callable[[Engine], Objective], engine: Engine, exact: Callable[[], Engine]) -> None:
        self.make, self.exact = make, exact
        self.objective = make(engine)
        self.evaluations = 0
        self.switched_at: int | None = None

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray, dict[str, float]]:
        self.evaluations += 1
        return self.objective(x)

    def upgrade(self) -> bool:
        if self.switched_at is not None:
            return False
        self.objective = self.make(self.exact())
        self.switched_at = self.evaluations
        return True


def _staged(
    callback: Callable[[Iterate], None] | None, offset: int, total: int, stage: int, stages: int, canvas: Canvas
) -> Callable[[Iterate], None] | None:
    """Steps count across coarse-to-fine stages, so progress is one bar over the whole plan;
    the image handed on is the photo's region of a grid canvas."""
    if callback is None:
        return None

    def cb(it: Iterate) -> None:
        callback(dataclasses.replace(it, step=it.step + offset, total=total, stage=stage, stages=stages, image=canvas.crop(it.image)))

    return cb


def _hooked(objective: Objective, hook: ObjectiveHook | None) -> Objective:
    """The objective with ``hook`` applied to each evaluation's loss and gradient (tests inject faults here)."""
    if hook is None:
        return objective

    def hooked(x: np.ndarray) -> tuple[float, np.ndarray, dict[str, float]]:
        loss, grad, terms = objective(x)
        return (*hook(x, loss, grad), terms)

    return hooked


def _style_targets(
    styles: Sequence[np.ndarray], side: int, features: Callable[[np.ndarray], dict[str, np.ndarray]], regions: int,
    blend: Sequence[float] | None,
) -> dict[str, np.ndarray]:
    """The Gram targets of the style images, each resized to ``side``: one region per style
    ([R,C,C]) when ``regions`` > 1, else the styles blended: [1,C,C], or [C,C] for an old plain
    export (``regions`` 0)."""
    grams = []
    for st in styles:
        f = features(to_nchw(resize_to(st, *fit_longest(*st.shape[:2], side))))
        grams.append({k: v.reshape(v.shape[-2:]) for k, v in f.items() if k.startswith("gram_")})
    if regions > 1:
        return {k: np.stack([g[k] for g in grams]) for k in grams[0]}
    w = blend_weights(len(styles), blend)
    out = {}
    for k in grams[0]:
        b = sum(wi * g[k] for wi, g in zip(w, grams))
        out[k] = (b[None] if regions == 1 else b).astype(np.float32)
    return out


def _guide(masks: Sequence[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """The guide input [R,1,H,W]: all ones without masks (which is exactly the plain loss)."""
    if not masks:
        return np.ones((1, 1, *hw), np.float32)
    return np.stack([resize_to(np.asarray(m, np.float32), *hw) for m in masks])[:, None].astype(np.float32)


def stylize(
    content: np.ndarray,
    styles: np.ndarray | Sequence[np.ndarray],
    models: Path,
    masks: Sequence[np.ndarray] | None = None,
    config: EngineConfig | None = None,
    settings: RunSettings | None = None,
) -> np.ndarray:
    """Stylize ``content`` (RGB float32 HxWx3 in [0,1]) with one or more style images, using
    the export in ``models``. Returns the stylized RGB image, float32 in [0,1]."""
    if isinstance(styles, np.ndarray) and styles.ndim == 3:
        styles = [styles]
    result = Stylizer(models, config).run(content, list(styles), settings, masks=masks)
    return np.ascontiguousarray(result.image[0].transpose(1, 2, 0))
