"""Python API: ``stylize(content, styles, **settings)`` and a warm ``Stylizer``."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelsError
from ..spec import ExportSettings, canonical_preset, preset_spec, torchvision_default_path
from .engine import Engine
from .colour import luminance_image, match_histogram, match_luminance, recombine_luminance
from .image_io import fit_size, from_nchw, resize_longest, resize_to, to_nchw
from .manifest import check_matches, default_export_dir, export_command
from .memory import check_fits
from .optimize import Iterate, Result, adam, lbfgs, lbfgs_rounds, torch_lbfgs


@dataclass(frozen=True)
class Settings:
    """Every stylization setting; the CLI's defaults are read from here."""

    # Longest side of the output. 512 px is what Gatys et al. and neural-style showcase;
    # the cost per evaluation grows with the pixel count.
    size: int = 512
    # Gradient evaluations (the unit of cost). L-BFGS reaches a converged-looking image in
    # 300-500 at 512 px; more refines texture only slightly.
    iterations: int = 300
    # None: the export's default (gatys: content 1, style 20, TV 0). The gatys losses are
    # relative errors, so these balance the same way at every size and for both weights.
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    # Several styles: their Gram targets are averaged with these weights (normalized to sum 1).
    style_blend: tuple[float, ...] | None = None
    # Style images are resized to size × style_scale (longest side) before their Grams are
    # taken: larger scales give larger brush strokes.
    style_scale: float = 1.0
    # content: fastest to converge and keeps the scene; noise is Gatys' original choice.
    init: str = "content"
    # Fixed by default so that the same command gives the same pixels on the same machine.
    seed: int = 0
    # lbfgs: scipy's L-BFGS-B, pixels bounded to [0,1]; torch-lbfgs: torch.optim.LBFGS as
    # the PyTorch tutorial runs it; adam; keras-lbfgs: the Keras example's restarted rounds.
    optimizer: str = "lbfgs"
    # L-BFGS memory; 20 pairs reach the same loss as 100 here (benchmarks/optimizer.py) at a
    # fifth of the memory (each pair is 2 float64 images: 24 MB at 1024 px).
    lbfgs_history: int = 20
    # keras-lbfgs: the evaluations are split into this many fresh L-BFGS-B runs.
    rounds: int = 1
    # Adam step in [0,1] pixel units (0.02 ≈ 5/255 per step at first).
    adam_lr: float = 0.02
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    # TensorFlow/Keras form of Adam's ε (on the uncorrected √v), for the tf-tutorial preset.
    adam_tf_epsilon: bool = False
    # What --size measures: the longest side, or the height (the Keras example's 400 rows).
    fit: str = "longest"
    # Colour control (Gatys et al. 2017): None, "luminance" (transfer luminance only, keep
    # the content's chroma) or "histogram" (recolour the style to the content's colours).
    preserve_color: str | None = None
    # Coarse-to-fine: longest side per stage, the last being the output size; each stage
    # starts from the previous result upsampled. None: one stage at ``size``.
    scales: tuple[int, ...] | None = None
    # Evaluations per stage (default: ``iterations`` for every stage).
    scale_iterations: tuple[int, ...] | None = None
    # Above 512 px without --scales: first half the evaluations at half size, then the full
    # ``iterations`` at full size. At 512 px a half-size stage reached the torch reference's
    # loss in 508 s against the reference's 615 s (benchmarks/results/time_to_quality.md),
    # and the advantage grows with size, as the coarse stage costs a quarter per evaluation.
    coarse_to_fine_above: int = 512
    # Guided graphs for masks (set by the CLI when --mask/--masks are given).
    guided: bool = False
    device: str = "auto"
    # Export settings used to find (or make) the graphs in the cache.
    preset: str = "gatys"
    pooling: str = "max"
    weights: str = "caffe"
    # TensorRT only: half-precision engines (about 2× faster on tensor cores).
    fp16: bool = False
    # None: one thread per physical core.
    threads: int | None = None

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def export_settings(self) -> ExportSettings:
        try:
            spec = preset_spec(self.preset).replace(pooling=self.pooling, guided=self.guided)
        except ValueError as e:
            raise ModelsError(str(e)) from None
        return ExportSettings(spec, canonical_preset(self.preset), self.weights)


# What each preset sets besides the loss: optimizer, schedule, size (explicit flags override).
PRESET_RUN: dict[str, dict[str, Any]] = {
    "gatys": {},
    # PyTorch tutorial: torch.optim.LBFGS (lr 1, history 100, no line search), clamped,
    # content init, 300 steps, 512 px.
    "torch-tutorial": {"optimizer": "torch-lbfgs", "lbfgs_history": 100, "iterations": 300, "size": 512},
    "torch-notebook": {"optimizer": "torch-lbfgs", "lbfgs_history": 100, "iterations": 300, "size": 512},
    # TensorFlow tutorial: Adam(0.02, β1 0.99, ε 0.1), clipped each step, 10 × 100 steps, 512 px.
    "tf-tutorial": {
        "optimizer": "adam",
        "adam_lr": 0.02,
        "adam_betas": (0.99, 0.999),
        "adam_eps": 0.1,
        "adam_tf_epsilon": True,
        "iterations": 1000,
        "size": 512,
    },
    # Keras example: fmin_l_bfgs_b(maxfun=20) × 20 rounds (scipy's m = 10), height 400.
    "keras-example": {"optimizer": "keras-lbfgs", "lbfgs_history": 10, "rounds": 20, "iterations": 400, "size": 400, "fit": "height"},
}
# Presets whose notebook used torchvision's VGG19: those weights when present, else Caffe's.
TORCHVISION_PRESETS = ("torch-tutorial", "torch-notebook")


def preset_settings(preset: str, log: Callable[[str], None] | None = None, **explicit: Any) -> Settings:
    """Settings for a preset: its run settings, then the explicitly given ones on top."""
    name = canonical_preset(preset)
    preset_spec(name)  # raises on an unknown name
    base = Settings(preset=name).replace(**PRESET_RUN.get(name, {}))
    given = {k: v for k, v in explicit.items() if v is not None}
    if name in TORCHVISION_PRESETS and "weights" not in given:
        if os.path.isfile(torchvision_default_path()):
            given["weights"] = "torchvision"
        elif log:
            log(f"torchvision VGG19 weights not found at {torchvision_default_path()}: the Caffe weights stand in for {name}")
    return base.replace(**given)


def torch_available() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked torch
        return False


def resolve_models(
    settings: Settings, models: Path | None = None, log: Callable[[str], None] | None = None
) -> tuple[Path, str]:
    """(models folder, command that re-creates it). Exports into the cache once if torch is here."""
    es = settings.export_settings()
    fix = export_command(es)
    if models is not None:
        return Path(models), f"{fix} --out {models}"
    folder = default_export_dir(es)
    if (folder / "manifest.json").is_file():
        return folder, fix
    if not torch_available():
        raise ModelsError(
            f"no exported graphs in {folder} and torch is not installed to make them: "
            f"run `{fix}` on a machine with pip install 'onnxstyle[export]', then copy the folder "
            f"there (or pass --models DIR)"
        )
    from ..export.exporter import export  # torch only on this path

    if log:
        log(f"no export for preset {es.preset} yet: exporting once to {folder}")
    export(es, folder, log=log, overwrite=False)
    return folder, fix


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
    """Keeps the onnxruntime sessions of one export warm across many images."""

    def __init__(
        self,
        settings: Settings | None = None,
        models: Path | None = None,
        log: Callable[[str], None] | None = None,
        expect: dict[str, str] | None = None,
    ) -> None:
        """``expect``: export settings (preset, pooling, weights) the models folder must match."""
        self.settings = settings or Settings()
        folder, fix = resolve_models(self.settings, models, log)
        self.engine = Engine(folder, self.settings.device, self.settings.threads, self.settings.fp16, fix)
        check_matches(self.engine.manifest, fix, **(expect or {}))

    def targets(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        settings: Settings,
        side: int | None = None,
        regions: int = 0,
    ) -> dict[str, np.ndarray]:
        """Content features of ``content`` and the Gram matrices of ``styles``.

        ``regions`` = 0: one Gram per layer, the styles blended (``style_blend``);
        1: the blend as the single region of a guided export ([1,C,C]); R > 1: one
        region per style image ([R,C,C]), for ``masks``.
        """
        ct = self.engine.features(to_nchw(content))
        targets = {k: v for k, v in ct.items() if k.startswith("content_")}
        side = max(32, round((side or settings.size) * settings.style_scale))
        grams = [
            {k: v for k, v in self.engine.features(to_nchw(resize_longest(st, side))).items() if k.startswith("gram_")}
            for st in styles
        ]
        if regions > 1:
            for k in grams[0]:
                targets[k] = np.stack([g[k] for g in grams])
        else:
            w = blend_weights(len(styles), settings.style_blend)
            for k in grams[0]:
                blend = sum(wi * g[k] for wi, g in zip(w, grams))
                targets[k] = blend[None] if regions == 1 else blend
        return {k: np.ascontiguousarray(v, np.float32) for k, v in targets.items()}

    def initial(self, content: np.ndarray, styles: Sequence[np.ndarray], settings: Settings, init_image: np.ndarray | None) -> np.ndarray:
        h, w = content.shape[:2]
        if settings.init == "content":
            return to_nchw(content)
        if settings.init == "style":
            return to_nchw(resize_to(styles[0], h, w))
        if settings.init == "noise":
            rng = np.random.default_rng(settings.seed)
            return rng.uniform(0.0, 1.0, (1, 3, h, w)).astype(np.float32)
        if init_image is None:
            raise ValueError(f"--init {settings.init}: expected content, style, noise or an image path")
        return to_nchw(resize_to(init_image, h, w))

    def run(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        settings: Settings | None = None,
        callback: Callable[[Iterate], None] | None = None,
        init_image: np.ndarray | None = None,
        objective_hook: Callable[[np.ndarray, float, np.ndarray], tuple[float, np.ndarray]] | None = None,
        masks: Sequence[np.ndarray] | None = None,
    ) -> Result:
        """Optimize an image; content/styles are RGB float32 HxWx3 in [0,1], any size.

        ``masks``: greyscale HxW in [0,1] (any size, resized to the content). One mask:
        white is stylized, black keeps the content; one per style: each style in its region.
        """
        s = settings or self.settings
        if not styles:
            raise ValueError("at least one style image is needed")
        if masks and len(masks) > 1 and len(masks) != len(styles):
            raise ValueError(f"--masks has {len(masks)} masks for {len(styles)} style images")
        guided = self.engine.manifest.spec.guided
        if masks and not guided:
            raise ModelsError(f"{self.engine.folder} has no guided graphs for masks; re-export with: {self.engine.fix_hint} --guided")
        stages = stage_plan(s)
        final_hw = fit_size(content.shape[0], content.shape[1], stages[-1][0], s.fit)
        check_fits(self.engine.manifest.spec, *final_hw, s.optimizer, s.lbfgs_history)

        # Colour (Gatys et al. 2017): optimize luminance only, or recolour the styles first.
        work_content = content
        if s.preserve_color == "luminance":
            styles = [match_luminance(st, content) for st in styles]
            work_content = luminance_image(content)
        elif s.preserve_color == "histogram":
            styles = [match_histogram(st, content) for st in styles]
        elif s.preserve_color is not None:
            raise ValueError(f"--preserve-color {s.preserve_color!r}: choose luminance or histogram")

        weights = {
            k: v
            for k, v in (("content_weight", s.content_weight), ("style_weight", s.style_weight), ("tv_weight", s.tv_weight))
            if v is not None
        }
        regions = (len(masks) if masks and len(masks) > 1 else 1) if guided else 0
        results: list[Result] = []
        offset = 0
        x = None
        for size, evaluations in stages:
            hw = fit_size(content.shape[0], content.shape[1], size, s.fit)
            c = resize_to(work_content, *hw)
            targets = self.targets(c, styles, s, side=size, regions=regions)
            if guided:
                targets["guide"] = _guide(masks, hw, regions)
            # Each stage starts from the previous result, upsampled (coarse-to-fine).
            x0 = self.initial(c, styles, s, init_image) if x is None else to_nchw(resize_to(from_nchw(x), *hw))
            r = self._optimize(s, x0, evaluations, targets, weights, callback, offset, objective_hook)
            results.append(r)
            offset += r.evaluations
            x = r.image
            if r.interrupted or r.error:
                break
        last = results[-1]
        image = last.image
        if s.preserve_color == "luminance":
            rgb = recombine_luminance(from_nchw(image), resize_to(content, image.shape[2], image.shape[3]))
            image = to_nchw(rgb)
        return Result(
            image,
            last.loss,
            last.terms,
            sum(r.evaluations for r in results),
            sum(r.elapsed for r in results),
            last.interrupted,
            sum(r.faults for r in results),
            [v for r in results for v in r.history],
            last.error,
        )

    def _optimize(
        self,
        s: Settings,
        x0: np.ndarray,
        evaluations: int,
        targets: dict[str, np.ndarray],
        weights: dict[str, float],
        callback: Callable[[Iterate], None] | None,
        offset: int,
        objective_hook: Callable[[np.ndarray, float, np.ndarray], tuple[float, np.ndarray]] | None,
    ) -> Result:
        def objective(x: np.ndarray) -> tuple[float, np.ndarray, dict[str, float]]:
            r = self.engine.loss_grad(x, targets, weights)
            loss, grad = r.loss, r.grad
            if objective_hook is not None:  # tests inject faults here
                loss, grad = objective_hook(x, loss, grad)
            return loss, grad, r.terms

        cb = callback
        if callback is not None and offset:
            # Steps count across coarse-to-fine stages, so progress is one bar.
            def cb(it: Iterate) -> None:
                callback(dataclasses.replace(it, step=it.step + offset))

        if s.optimizer == "lbfgs":
            return lbfgs(objective, x0, evaluations, history=s.lbfgs_history, callback=cb)
        if s.optimizer == "adam":
            return adam(
                objective, x0, evaluations, lr=s.adam_lr, betas=s.adam_betas, eps=s.adam_eps,
                tf_epsilon=s.adam_tf_epsilon, callback=cb,
            )
        if s.optimizer == "torch-lbfgs":
            return torch_lbfgs(objective, x0, evaluations, history=s.lbfgs_history, callback=cb)
        if s.optimizer == "keras-lbfgs":
            per_round = max(1, evaluations // max(1, s.rounds))
            return lbfgs_rounds(objective, x0, s.rounds, per_round, history=s.lbfgs_history, callback=cb)
        raise ValueError(f"unknown optimizer {s.optimizer!r}; choose lbfgs, torch-lbfgs, adam or keras-lbfgs")


def stage_plan(s: Settings) -> list[tuple[int, int]]:
    """(size, evaluations) per coarse-to-fine stage; the last size is the output size."""
    if not s.scales:
        if s.coarse_to_fine_above and s.size > s.coarse_to_fine_above:
            return [(s.size // 2, max(1, s.iterations // 2)), (s.size, s.iterations)]
        return [(s.size, s.iterations)]
    sizes = list(s.scales)
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 32:
        raise ValueError(f"--scales {','.join(map(str, sizes))}: sizes must rise, from 32 px up")
    its = list(s.scale_iterations) if s.scale_iterations else [s.iterations] * len(sizes)
    if len(its) != len(sizes) or min(its) < 1:
        raise ValueError(f"--scale-iterations needs {len(sizes)} positive counts, one per scale")
    return list(zip(sizes, its))


def total_evaluations(s: Settings) -> int:
    return sum(n for _, n in stage_plan(s))


def _guide(masks: Sequence[np.ndarray] | None, hw: tuple[int, int], regions: int) -> np.ndarray:
    if not masks:
        return np.ones((1, 1, *hw), np.float32)
    ms = [resize_to(np.asarray(m, np.float32), *hw) for m in masks]
    return np.stack(ms)[:, None].astype(np.float32)


def stylize(
    content: np.ndarray,
    styles: np.ndarray | Sequence[np.ndarray],
    models: Path | None = None,
    masks: Sequence[np.ndarray] | None = None,
    **settings: Any,
) -> np.ndarray:
    """Stylize ``content`` (RGB float32 HxWx3 in [0,1]) with one or more style images.

    Keyword arguments are :class:`Settings` fields (``preset`` first sets that preset's
    run settings). ``masks``: one greyscale mask (white: stylize) or one per style.
    Returns the stylized RGB image, float32 in [0,1], with the longest side ``size``.
    """
    if isinstance(styles, np.ndarray) and styles.ndim == 3:
        styles = [styles]
    preset = settings.pop("preset", "gatys")
    s = preset_settings(preset, **settings)
    if masks:
        s = s.replace(guided=True)
    result = Stylizer(s, models).run(content, list(styles), s, masks=masks)
    return np.ascontiguousarray(result.image[0].transpose(1, 2, 0))
