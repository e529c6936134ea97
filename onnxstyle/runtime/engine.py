"""An export's two graphs behind one contract: ``features(image, guide)`` and
``loss_grad(image, targets, weights)``, whatever backend runs them.

The backend is chosen once, by :func:`onnxstyle.runtime.backends.select_backend` (a pure
function), from the :class:`EngineConfig`; sessions are built lazily and stay warm across
images. Graph forms of every readable format version are fed from the manifest: a
guided graph (format ≥ 2 with a ``guide`` input) gets an all-ones guide when no mask is
given, which is exactly the plain loss.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..exportdir import FEATURES, LOSS_GRAD, TILE_GRAD, Manifest, read_manifest
from ..errors import ModelsError, SizeError
from .backends import BackendChoice, GraphRunner, available_backends, make_runner, release_heap, select_backend
from .settings import EngineConfig


@dataclass
class LossGrad:
    loss: float
    grad: np.ndarray
    terms: dict[str, float] = field(default_factory=dict)


_DIM = re.compile(r"^(H|W)(?:/(\d+))?$")


def resolve_shape(shape: list[Any], height: int, width: int, regions: int) -> tuple[int, ...]:
    """A manifest shape with its symbols (H, W, H/8, R, …) filled in for one image size.

    H/8 is three floor-halvings of H, as the pools do (the same as H // 8 for integers).
    """
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
            continue
        if d == "R":
            out.append(regions)
            continue
        m = _DIM.match(str(d))
        if not m:
            raise ModelsError(f"unknown symbolic dimension {d!r} in the manifest")
        base = height if m.group(1) == "H" else width
        out.append(base // int(m.group(2) or 1))
    return tuple(out)


class Engine:
    """Both graphs of one export, run by one backend, with sessions kept warm across images."""

    def __init__(
        self, models: Path, config: EngineConfig | None = None, fix_hint: str = "onnxstyle export", check: bool = True
    ) -> None:
        self.config = config or EngineConfig()
        self.folder = Path(models)
        self.fix_hint = fix_hint
        self.manifest: Manifest = read_manifest(self.folder, fix_hint)
        self.choice: BackendChoice = select_backend(available_backends(), self.config)
        self._runners: dict[tuple[str, str, int, int, int], GraphRunner] = {}
        self.feature_names = [o["name"] for o in self.manifest.outputs(FEATURES)]
        self.weight_defaults = self.manifest.weight_defaults
        lg_inputs = {i["name"] for i in self.manifest.inputs(LOSS_GRAD)}
        self.guided = "guide" in lg_inputs
        # Format 3 graphs take a temporal target and weight map (video); zeros switch it off.
        self.temporal = "temporal_target" in lg_inputs
        self._features_guided = any(i["name"] == "guide" for i in self.manifest.inputs(FEATURES))
        # The models check (runtime/selfcheck.py), before the first evaluation at the engine's
        # precision; ``check`` False: the export's own validation, which holds it to more.
        self._checking = not check
        self.checked: Any = None  # its verdict, once run (None: not yet, or switched off)
        self._checked = False

    @property
    def provider(self) -> str:
        """What runs the graphs, in words (backend, device, precision)."""
        return self.choice.describe()

    @property
    def threads(self) -> int:
        return self.choice.threads

    def self_check(self) -> Any:
        """Check this export on this engine once per machine, engine and precision (a stored
        verdict, else a 64x48 problem run in fp32 and at the engine's precision); an ``auto``
        precision that fails becomes fp32 here. Runs by itself before the first evaluation that
        is not an fp32 target; call it earlier to plan with the precision that will run."""
        if not (self._checked or self._checking):
            from .selfcheck import ensure

            self._checking = True
            try:
                self.checked = ensure(self)
                self._checked = True
            finally:
                self._checking = False
        return self.checked

    def _runner(self, graph: str, height: int, width: int, regions: int, exact: bool = False, dynamic: bool = False) -> GraphRunner:
        """A warm runner; ``exact``: fp32 whatever the engine's precision (the targets);
        ``dynamic``: one runner for every size (tiles come in several sizes)."""
        self._check_size(height, width)
        if not self._checked and (graph != FEATURES or not exact):
            self.self_check()
        choice = self.choice
        if exact and choice.precision != "fp32":
            choice = dataclasses.replace(choice, precision="fp32")
        per_shape = choice.per_shape and not (dynamic and choice.backend == "openvino")
        size = (height, width, regions) if per_shape else (0, 0, 0)
        key = (graph, choice.precision, *size)
        runner = self._runners.get(key)
        if runner is None:
            if per_shape and choice.backend == "openvino":
                # One size at a time: the previous stage's buffers go before the next's come.
                for old in [k for k in self._runners if k[:2] == key[:2] and k[2:] != (0, 0, 0)]:
                    self._runners.pop(old).close()
            shapes = {i["name"]: resolve_shape(i["shape"], height, width, regions) for i in self.manifest.inputs(graph)}
            weights = self.weight_defaults if graph == LOSS_GRAD else {}
            runner = make_runner(choice, self.folder, graph, shapes if per_shape else None, self.fix_hint, weights)
            self._runners[key] = runner
        return runner

    def _check_size(self, height: int, width: int) -> None:
        """Refuse an image the pools would leave nothing of, before an engine compiles for it: the
        plan checks the content up front (plan.check_sizes); this catches every other image (a
        style the plan was not told about) with the same usage error, not the engine's."""
        spec = self.manifest.spec
        if min(height, width) < spec.min_side:
            raise SizeError(
                f"an image of {width}x{height} px has a side under {spec.min_side} px, the least the network takes "
                f"({spec.deepest} is {spec.min_side.bit_length() - 1} pools deep); use a larger --size "
                "(or --style-scale, for a style image)"
            )

    def release(self, graph: str = FEATURES, precision: str | None = None) -> None:
        """Drop a graph's sessions (of one precision only, if given): the features graph is not
        needed once the targets exist, nor its fp32 copy once a tiled run's targets do."""
        for key in [k for k in self._runners if k[0] == graph and precision in (None, k[1])]:
            self._runners.pop(key).close()
        release_heap()

    def features(self, image: np.ndarray, guide: np.ndarray | None = None, exact: bool = True, dynamic: bool = False) -> dict[str, np.ndarray]:
        """Content maps and Grams. ``exact`` (the default, for targets): fp32 even on a bf16
        engine, as targets are computed once per stage; a tiled evaluation's first pass runs
        at the engine's precision (``exact=False``)."""
        _, _, h, w = image.shape
        feeds: dict[str, np.ndarray] = {"image": _f32(image)}
        if self._features_guided:
            feeds["guide"] = _f32(guide) if guide is not None else np.ones((1, 1, h, w), np.float32)
        elif guide is not None:
            raise ModelsError(f"{self.folder} has no guided features graph; re-export with: {self.fix_hint}")
        regions = feeds["guide"].shape[0] if "guide" in feeds else 1
        out = self._runner(FEATURES, h, w, regions, exact, dynamic).run(feeds, self.feature_names)
        # Copies: onnxruntime's outputs are views into its arena, and a target held for a whole
        # stage would keep the features session's arena alive after the session is released.
        return {k: np.array(v, copy=True) for k, v in out.items()}

    def loss_grad(
        self, image: np.ndarray, targets: dict[str, np.ndarray], weights: dict[str, float] | None = None, exact: bool = False
    ) -> LossGrad:
        """The loss, its terms and its gradient at the engine's precision (``exact``: fp32)."""
        _, _, h, w = image.shape
        feeds: dict[str, Any] = {"image": _f32(image), **targets}
        if self.temporal and "temporal_target" not in feeds:
            feeds.update(no_temporal(h, w))
        for k, v in (weights or {}).items():
            if k not in self.weight_defaults:
                raise ModelsError(f"the export has no weight input {k!r}; it has {sorted(self.weight_defaults)}")
            feeds[k] = np.array(v, np.float32)
        regions = targets["guide"].shape[0] if "guide" in targets else 1
        runner = self._runner(LOSS_GRAD, h, w, regions, exact)
        res = runner.run(feeds, runner.output_names)
        terms = {k: float(v) for k, v in res.items() if k.startswith("loss_")}
        return LossGrad(float(res["loss"]), res["grad"], terms)


def no_temporal(height: int, width: int) -> dict[str, np.ndarray]:
    """The temporal inputs that switch the term off: a zero weight map (and any target)."""
    return {"temporal_target": np.zeros((1, 3, height, width), np.float32), "temporal_map": np.zeros((1, 1, height, width), np.float32)}


def _f32(a: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d scalar into shape (1,), which OpenVINO refuses.
    return np.asarray(a, dtype=np.float32, order="C")


class TileGrad:
    """The tiled pass's gradient graph of an engine, as a function of its feeds."""

    def __init__(self, engine: Engine) -> None:
        if not engine.manifest.has(TILE_GRAD):
            raise ModelsError(
                f"{engine.folder} (format version {engine.manifest.version}) has no tile graph for large images; "
                f"re-export with: {engine.fix_hint}"
            )
        self.engine = engine

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        _, _, h, w = feeds["image"].shape
        runner = self.engine._runner(TILE_GRAD, h, w, feeds["guide"].shape[0], dynamic=True)
        return runner.run({k: _f32(v) for k, v in feeds.items()}, ["grad"])["grad"]
