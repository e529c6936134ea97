"""``onnxstyle sweep``: a grid of settings over one content and one style, as one contact sheet."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..errors import Interrupted
from ..runtime import inputs
from ..runtime.image_io import check_output_path, from_nchw, save_image
from ..runtime.optimize import Iterate, Result
from ..runtime.settings import RunSettings, build_run_settings, knobs, scalar_type
from .options import EXIT_FAULTS, EXIT_INTERRUPTED, EXIT_USAGE, Common, command, err, fail, interrupt_code, sigterm_as_interrupt

# What `sweep --vary` can vary: CLI name → (RunSettings field, or preset/pooling, and its type),
# the fields' names and types read from their knobs.
VARIED = ("style_weight", "content_weight", "tv_weight", "init", "seed", "iterations", "size", "style_scale", "optimizer",
          "adam_lr", "preserve_color")
VARYABLE: dict[str, tuple[str, type]] = {
    **{(f.metadata["knob"]["flag"] or f.name).replace("_", "-"): (f.name, scalar_type(f)) for f in map(knobs().__getitem__, VARIED)},
    "preset": ("preset", str), "pooling": ("pooling", str),
}
PANEL_SIZE = 256  # a sheet of panels: each small enough that a 3×3 grid takes minutes, not hours


@dataclass
class Panel:
    label: str
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
    given: dict[str, Any]
    preset: str
    pooling: str | None
    max_pixels: int
    plans: list[Panel] = field(default_factory=list)
    panels: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    evaluations: int = 0
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        for combo in itertools.product(*[vals for _, vals in self.axes]):
            changes, where = dict(self.given), {"preset": self.preset, "pooling": self.pooling}
            for (name, _), value in zip(self.axes, combo):
                target = VARYABLE[name][0]
                (where if target in where else changes)[target] = value
            label = ", ".join(f"{name}={_fmt(v)}" for (name, _), v in zip(self.axes, combo))
            self.plans.append(Panel(label, where["preset"], where["pooling"], build_run_settings(where["preset"], 1, **changes)))

    def check(self) -> None:
        check_output_path(self.output, [self.content, self.style])
        for p in (self.content, self.style):
            inputs.header(p, max_pixels=self.max_pixels)

    def total_evaluations(self) -> int:
        return sum(p.settings.total_evaluations() for p in self.plans)

    def load_images(self) -> None:
        largest = max((p.settings for p in self.plans), key=lambda s: s.style_side())
        self.content_rgb, _ = inputs.decode(self.content, max(p.settings.size for p in self.plans), max_pixels=self.max_pixels)
        self.style_rgb, _ = inputs.decode(self.style, largest.style_side(), max_pixels=self.max_pixels)

    def run(self, open_stylizer: Callable[[str, str | None], Any], progress: Callable[[Iterate], None] | None = None) -> None:
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
        from .sheet import contact_sheet, enlarge_for_labels

        columns = len(self.axes[0][1])
        rows = -(-len(self.panels) // columns)
        title = f"{self.content.name} x {self.style.name}: preset {self.preset}, {self.given.get('size')} px"
        col_labels = [f"{self.axes[0][0]}={_fmt(v)}" for v in self.axes[0][1]]
        row_labels = [f"{self.axes[1][0]}={_fmt(v)}" for v in self.axes[1][1]][:rows] if len(self.axes) > 1 else None
        sheet = contact_sheet(enlarge_for_labels(self.panels), self.labels, columns, title=title, row_labels=row_labels, col_labels=col_labels)
        vary = [f"{n}={','.join(_fmt(v) for v in vals)}" for n, vals in self.axes]
        meta = inputs.metadata(self.plans[0].settings, content=str(self.content), style=str(self.style), vary=vary,
                               panels=self.labels, complete=len(self.panels) == len(self.plans))
        save_image(self.output, sheet, text=meta)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _parse_vary(items: list[str]) -> list[tuple[str, list[Any]]]:
    if not items or len(items) > 2:
        raise fail("give one or two --vary NAME=v1,v2,... (columns, then rows)", EXIT_USAGE)
    axes = []
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("_", "-")
        if name not in VARYABLE or not values:
            raise fail(f"--vary {item!r}: expected NAME=v1,v2 with NAME one of {', '.join(VARYABLE)}", EXIT_USAGE)
        kind = VARYABLE[name][1]
        try:
            vals = [kind(v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise fail(f"--vary {item!r}: {name} takes {kind.__name__} values", EXIT_USAGE) from None
        axes.append((name, vals))
    return axes


@command(
    run=("size", "iterations", "content_weight", "style_weight", "tv_weight", "init", "seed", "optimizer", "preserve_color"),
    size=("longest side of each panel", str(PANEL_SIZE)), iterations=("evaluations per panel", "the preset's"),
    init=("content, style or noise", None),
)
def sweep(
    content: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="content image")],
    style: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="style image")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the contact sheet (.png, .jpg, .webp)")],
    vary: Annotated[list[str], typer.Option(help="NAME=v1,v2,...: the first gives the columns, a second the rows")],
    *, run: dict[str, Any], common: Common,
) -> None:
    """Run a grid of settings and write one labelled contact sheet."""
    from .progress import ProgressView

    axes = _parse_vary(vary)
    if common.models is not None and any(name in ("preset", "pooling") for name, _ in axes):
        raise fail("--vary preset/pooling needs the cache (one export each), not one --models folder", EXIT_USAGE)
    run["size"] = run["size"] or PANEL_SIZE
    job = SweepJob(content, style, output, axes, {k: v for k, v in run.items() if v is not None}, common.preset_name, common.pooling,
                   common.max_pixels)
    job.check()
    job.load_images()
    code = 0
    try:
        with sigterm_as_interrupt(), ProgressView(err, job.total_evaluations(), "sweep", common.quiet) as view:
            job.run(lambda preset, pooling: common.open(preset, pooling), view)
    except Interrupted as e:
        code = interrupt_code(e)
    if not job.panels:
        common.say("interrupted before the first panel: nothing written")
        raise typer.Exit(code or EXIT_INTERRUPTED)
    job.save()
    common.say(f"wrote {output}: {len(job.panels)} of {len(job.plans)} panels, {job.evaluations} evaluations")
    if code:
        common.say("interrupted: the sheet holds the panels that were done")
        raise typer.Exit(code)
    if job.failed:
        raise fail(f"{len(job.failed)} panel(s) stopped after repeated numerical faults: {'; '.join(job.failed)}", EXIT_FAULTS)
