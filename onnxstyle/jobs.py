"""Jobs over files: the edges around the array-only runtime (paths in, images out).

A job checks its paths before any work, decodes each input once at the size it needs,
runs a stylizer, and writes its output atomically with the settings in the PNG. The CLI,
the batch command and the service use these; they print nothing themselves.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .version import __version__
from .errors import Interrupted
from .runtime.image_io import (
    DEFAULT_MAX_PIXELS,
    ImageHeader,
    check_output_path,
    fit_longest,
    fit_size,
    from_nchw,
    load_image,
    probe_image,
    resize_to,
    save_image,
)
from .runtime.optimize import Iterate, Result
from .runtime.settings import RunSettings, preset_run_settings

Progress = Callable[[Iterate], None]


def settings_record(settings: RunSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


@dataclass
class StylizeJob:
    """One content image, one or more styles, one output file."""

    content: Path
    styles: list[Path]
    output: Path
    settings: RunSettings
    masks: list[Path] = field(default_factory=list)
    init: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_every: int = 0
    # Extra metadata stored in the PNG (the CLI adds the models folder and the device).
    meta: dict[str, Any] = field(default_factory=dict)
    content_rgb: np.ndarray | None = None
    alpha: np.ndarray | None = None
    style_rgbs: list[np.ndarray] = field(default_factory=list)
    init_rgb: np.ndarray | None = None
    mask_arrays: list[np.ndarray] = field(default_factory=list)
    # Each input's header, read once: the output size and the plan ask for them again and again.
    _headers: dict[Path, ImageHeader] = field(default_factory=dict, init=False, repr=False)

    @property
    def inputs(self) -> list[Path]:
        return [self.content, *self.styles, *self.masks] + ([self.init] if self.init else [])

    def _header(self, path: Path) -> ImageHeader:
        if path not in self._headers:
            self._headers[path] = probe_image(path, self.max_pixels)
        return self._headers[path]

    def check_paths(self) -> None:
        """Refuse an output that cannot be written before any minute is spent on it."""
        check_output_path(self.output, self.inputs)

    def probe_inputs(self) -> None:
        """Every input's header, before anything else is loaded: a bomb or a non-image is
        refused in milliseconds, not after the engine has started."""
        for p in self.inputs:
            self._header(p)

    def output_size(self) -> tuple[int, int]:
        """(height, width) of the result, from the content's header alone (nothing decoded)."""
        h, w = self._header(self.content).oriented
        return fit_size(h, w, self.settings.stages()[-1][0], self.settings.fit)

    def plan(self, stylizer: Any) -> Any:
        """The run's plan (stages, tiles, estimated peak) from the headers alone, counting the
        inputs as :meth:`load_images` will hold them."""
        from .runtime.memory import inputs_bytes

        h, w = self.output_size()
        side = self._style_side(h, w)
        styles = [fit_longest(*self._header(p).oriented, side) for p in self.styles]
        masks = [fit_longest(*self._header(p).oriented, max(h, w)) for p in self.masks]
        held = inputs_bytes((h, w), styles, masks, self.init is not None, self.settings.preserve_color)
        return stylizer.plan((h, w), self.settings, held, [self._header(p).oriented for p in self.styles])

    def _style_side(self, h: int, w: int) -> int:
        return max(32, round(max(self.settings.size, max(h, w)) * self.settings.style_scale))

    def check_memory(self, stylizer: Any) -> Any:
        """Refuse, from the headers alone, a run whose working set would not fit; the plan."""
        from .runtime.plan import check_plan

        plan = self.plan(stylizer)
        check_plan(plan)
        return plan

    def load_images(self) -> None:
        """Decode every input once, at the size it is used at (the content at the output size)."""
        h, w = self.output_size()
        s = self.settings
        self.content_rgb, self.alpha = load_image(self.content, max(h, w), self.max_pixels)
        self.style_rgbs = [load_image(p, self._style_side(h, w), self.max_pixels)[0] for p in self.styles]
        self.init_rgb = load_image(self.init, max(h, w), self.max_pixels)[0] if self.init else None
        self.mask_arrays = [load_image(p, max(h, w), self.max_pixels)[0].mean(axis=2) for p in self.masks]

    @property
    def height(self) -> int:
        return self.output_size()[0]

    @property
    def width(self) -> int:
        return self.output_size()[1]

    def run(self, stylizer: Any, progress: Progress | None = None, on_tile: Any = None) -> Result:
        assert self.content_rgb is not None, "load_images() first"

        def callback(it: Iterate) -> None:
            if progress is not None:
                progress(it)
            if self.save_every and it.step % self.save_every == 0:
                path = self.output.with_name(f"{self.output.stem}_{it.step:05d}{self.output.suffix}")
                self._write(path, it.image, {"evaluations": it.step, "loss": it.loss})

        return stylizer.run(
            self.content_rgb, self.style_rgbs, self.settings, callback, self.init_rgb, masks=self.mask_arrays or None, on_tile=on_tile
        )

    def save(self, result: Result, path: Path | None = None) -> None:
        extra = {
            "evaluations": result.evaluations,
            "loss": result.loss,
            "terms": result.terms,
            "interrupted": result.interrupted,
            "error": result.error,
        }
        self._write(path or self.output, result.image, extra)

    def _write(self, path: Path, image: np.ndarray, extra: dict[str, Any]) -> None:
        meta = {
            "onnxstyle": __version__,
            "content": str(self.content),
            "styles": [str(s) for s in self.styles],
            "settings": settings_record(self.settings),
            **self.meta,
            **extra,
        }
        alpha = None if self.alpha is None else resize_to(self.alpha, image.shape[2], image.shape[3])
        save_image(path, from_nchw(image), alpha, {"onnxstyle": json.dumps(meta)})


@dataclass
class Panel:
    label: str
    values: tuple[Any, ...]
    preset: str
    pooling: str | None
    settings: RunSettings


@dataclass
class SweepJob:
    """A grid of settings over one content and one style, written as one contact sheet."""

    content: Path
    style: Path
    output: Path
    axes: list[tuple[str, list[Any]]]
    explicit: dict[str, Any]
    preset: str
    pooling: str | None
    max_pixels: int
    fields: dict[str, tuple[str, type]]
    plans: list[Panel] = field(default_factory=list)
    panels: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    evaluations: int = 0
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        for combo in itertools.product(*[vals for _, vals in self.axes]):
            changes, preset, pooling = dict(self.explicit), self.preset, self.pooling
            for (name, _), value in zip(self.axes, combo):
                target = self.fields[name][0]
                if target == "preset":
                    preset = value
                elif target == "pooling":
                    pooling = value
                else:
                    changes[target] = value
            label = ", ".join(f"{name}={_fmt(v)}" for (name, _), v in zip(self.axes, combo))
            self.plans.append(Panel(label, combo, preset, pooling, preset_run_settings(preset, **changes)))

    def check_paths(self) -> None:
        check_output_path(self.output, [self.content, self.style])
        for p in (self.content, self.style):
            probe_image(p, self.max_pixels)

    def total_evaluations(self) -> int:
        return sum(p.settings.total_evaluations() for p in self.plans)

    def load_images(self) -> None:
        side = max(p.settings.size for p in self.plans)
        self.content_rgb, _ = load_image(self.content, side, self.max_pixels)
        self.style_rgb, _ = load_image(self.style, max(32, round(side * max(p.settings.style_scale for p in self.plans))), self.max_pixels)

    def run(self, open_stylizer: Callable[[str, str | None], Any], progress: Progress | None = None) -> None:
        """Every panel in turn. A panel stopped by numerical faults keeps its best image and
        the sweep goes on; Ctrl-C stops the sweep with the panels done so far kept."""
        stylizers: dict[tuple[str, str | None], Any] = {}
        total = self.total_evaluations()
        for panel in self.plans:
            key = (panel.preset, panel.pooling)
            if key not in stylizers:
                stylizers[key] = open_stylizer(*key)
            base, t0 = self.evaluations, self.elapsed

            def cb(it: Iterate, base: int = base, t0: float = t0) -> None:
                if progress is not None:
                    progress(dataclasses.replace(it, step=base + it.step, elapsed=t0 + it.elapsed, total=total, stage=1, stages=1))

            try:
                result = stylizers[key].run(self.content_rgb, [self.style_rgb], panel.settings, cb)
            except Interrupted as e:
                if e.partial is not None:
                    self._add(panel, e.partial, " (interrupted)")
                raise
            self._add(panel, result, "")
            if result.error:
                self.failed.append(f"{panel.label}: {result.error}")

    def _add(self, panel: Panel, result: Result, note: str) -> None:
        self.panels.append(from_nchw(result.image))
        stopped = " (stopped: faults)" if result.error else ""
        self.labels.append(f"{panel.label}  loss {result.loss:.3g}{note}{stopped}")
        self.evaluations += result.evaluations
        self.elapsed += result.elapsed

    def save(self) -> None:
        from .runtime.sheet import contact_sheet, enlarge_for_labels

        columns = len(self.axes[0][1])
        rows = -(-len(self.panels) // columns)
        panels = enlarge_for_labels(self.panels)
        size = self.explicit.get("size")
        title = f"{self.content.name} x {self.style.name}: preset {self.preset}, {size} px"
        col_labels = [f"{self.axes[0][0]}={_fmt(v)}" for v in self.axes[0][1]]
        row_labels = [f"{self.axes[1][0]}={_fmt(v)}" for v in self.axes[1][1]][:rows] if len(self.axes) > 1 else None
        sheet = contact_sheet(panels, self.labels, columns, title=title, row_labels=row_labels, col_labels=col_labels)
        meta = {
            "onnxstyle": __version__,
            "content": str(self.content),
            "style": str(self.style),
            "vary": [f"{n}={','.join(_fmt(v) for v in vals)}" for n, vals in self.axes],
            "panels": self.labels,
            "complete": len(self.panels) == len(self.plans),
        }
        save_image(self.output, sheet, text={"onnxstyle": json.dumps(meta)})


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)

