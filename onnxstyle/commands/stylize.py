"""``onnxstyle stylize``: one content image, one or more styles, one output file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from ..errors import Interrupted
from ..runtime import inputs
from ..runtime.image_io import DEFAULT_MAX_PIXELS, ImageHeader, check_output_path, save_image
from ..runtime.optimize import Iterate, Result
from ..runtime.settings import RunSettings
from .options import EXIT_FAULTS, EXIT_USAGE, IMAGE_RUN_OPTIONS, Common, command, duration, err, fail, interrupt_code, out, sigterm_as_interrupt

DEMO_SIZE = 256  # the no-argument demo: about two minutes on two cores


@dataclass
class StylizeJob:
    """One content image, one or more styles, one output file: paths checked before any work,
    each input decoded once at its working size, the output written atomically with the
    settings in the PNG."""

    content: Path
    styles: list[Path]
    output: Path
    settings: RunSettings
    masks: list[Path] = field(default_factory=list)
    init: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_every: int = 0
    loaded: inputs.Inputs | None = None
    # Each input's header, read once: the output size and the plan ask for them again and again.
    _headers: dict[Path, ImageHeader] = field(default_factory=dict, init=False, repr=False)

    @property
    def paths(self) -> list[Path]:
        return [self.content, *self.styles, *self.masks] + ([self.init] if self.init else [])

    def header(self, path: Path) -> ImageHeader:
        if path not in self._headers:
            self._headers[path] = inputs.header(path, max_pixels=self.max_pixels)
        return self._headers[path]

    def check(self) -> None:
        """The output path, then every input's header: a bomb, a non-image or an output that
        cannot be written is refused in milliseconds, before the engine starts."""
        check_output_path(self.output, self.paths)
        for p in self.paths:
            self.header(p)

    def output_size(self) -> tuple[int, int]:
        return inputs.output_size(self.header(self.content), self.settings)

    def plan(self, stylizer: Any) -> Any:
        """The run's plan (stages, tiles, estimated peak) from the headers alone."""
        from ..runtime.memory import inputs_bytes

        hw, styles, masks = inputs.planned_sizes(
            self.header(self.content), [self.header(p) for p in self.styles], [self.header(p) for p in self.masks], self.settings
        )
        held = inputs_bytes(hw, styles, masks, self.init is not None, self.settings.preserve_color)
        return stylizer.plan(hw, self.settings, held, [self.header(p).oriented for p in self.styles])

    def load_images(self) -> None:
        self.loaded = inputs.load(self.content, self.styles, self.settings, self.masks, self.init, self.max_pixels)

    def run(self, stylizer: Any, progress: Callable[[Iterate], None] | None = None, on_tile: Any = None) -> Result:
        assert self.loaded is not None, "load_images() first"

        def callback(it: Iterate) -> None:
            if progress is not None:
                progress(it)
            if self.save_every and it.step % self.save_every == 0:
                path = self.output.with_name(f"{self.output.stem}_{it.step:05d}{self.output.suffix}")
                self.write(path, it.image, evaluations=it.step, loss=it.loss)

        x = self.loaded
        return stylizer.run(x.content, x.styles, self.settings, callback, x.init, masks=x.masks or None, on_tile=on_tile)

    def save(self, result: Result) -> None:
        self.write(self.output, result.image, evaluations=result.evaluations, loss=result.loss, terms=result.terms,
                   interrupted=result.interrupted, error=result.error)

    def write(self, path: Path, image: np.ndarray, **fields: Any) -> None:
        assert self.loaded is not None
        from ..runtime.image_io import from_nchw, resize_to

        rgb, alpha = from_nchw(image), self.loaded.alpha
        alpha = None if alpha is None else resize_to(alpha, *rgb.shape[:2])
        meta = inputs.metadata(self.settings, content=str(self.content), styles=[str(s) for s in self.styles], **fields)
        save_image(path, rgb, alpha, meta)


def _print_plan(plan: Any, stylizer: Any, settings: RunSettings) -> None:
    """The dry-run: what would run, where, and its estimated peak memory, as plain lines; each
    stage's evaluations are its cap where the stop rule may end it sooner."""
    budget = f"{plan.budget / 2**20:.0f} MiB" if plan.budget is not None else "unknown"
    out.print(f"device: {stylizer.engine.provider}, {stylizer.engine.threads} threads; models: {stylizer.engine.folder}")
    out.print(f"memory budget: {budget}; estimated peak: {plan.peak / 2**20:.0f} MiB")
    for st in plan.stages:
        t = st.tiles
        tiles = (f"{len(t.tiles)} tiles ({t.grid[0]}x{t.grid[1]}) of {t.inner} px + {t.halo} px halo, "
                 f"{t.overhead:.2f}x pixels per pass") if t else "untiled"
        parts = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in st.estimate.parts.items())
        window, tol = settings.stop_rule(st.index, len(plan.stages))
        evals = (f"at most {st.evaluations} evaluations (ends once the loss falls < {tol:.2%} in {window})"
                 if window and st.optimizer == "lbfgs" else f"{st.evaluations} evaluations")
        out.print(
            f"stage {st.index}/{len(plan.stages)}: {st.width}x{st.height}, {evals}, {tiles}, "
            f"{st.optimizer}" + (f" (history {st.history})" if st.optimizer == "lbfgs" else "")
            + f"; estimated peak {st.estimate.total / 2**20:.0f} MiB ({parts} MiB)"
            + ("" if st.fp32_fallback else "; no fp32 fallback on a stall (over the budget)")
        )


def _inputs_or_demo(content: Path | None, styles: list[Path] | None) -> tuple[Path, list[Path], bool]:
    """The inputs given, or the bundled demo pair when there are none."""
    if content is None:
        if styles:
            raise fail("give a content image before the style images", EXIT_USAGE)
        base = resources.files("onnxstyle") / "data"
        return Path(str(base / "tubingen.jpg")), [Path(str(base / "starry_night.jpg"))], True
    if not styles:
        raise fail("give at least one style image after the content image", EXIT_USAGE)
    return content, list(styles), False


def _mask_paths(mask: Path | None, masks: str | None, n_styles: int) -> list[Path]:
    if mask and masks:
        raise fail("give --mask or --masks, not both", EXIT_USAGE)
    paths = [mask] if mask else [Path(p.strip()) for p in (masks or "").split(",") if p.strip()]
    if masks and len(paths) != n_styles:
        raise fail(f"--masks has {len(paths)} masks for {n_styles} style images", EXIT_USAGE)
    for p in paths:
        if not p.is_file():
            raise fail(f"--masks: {p} does not exist", EXIT_USAGE)
    return paths


def _init(init: str | None) -> tuple[str | None, Path | None]:
    """(RunSettings.init, the init image's path): a path given as --init means "image"."""
    if init is None or init in ("content", "style", "noise"):
        return init, None
    if not Path(init).is_file():
        raise fail(f"--init {init}: not content, style, noise or an existing image file", EXIT_USAGE)
    return "image", Path(init)


@command(run=IMAGE_RUN_OPTIONS)
def stylize(
    content: Annotated[
        Optional[Path], typer.Argument(exists=True, dir_okay=False, help="content image (default: the bundled Tübingen photo)")
    ] = None,
    styles: Annotated[
        Optional[list[Path]], typer.Argument(exists=True, dir_okay=False, help="one or more style images (default: The Starry Night)")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help=".png, .jpg or .webp")] = Path("stylized.png"),
    mask: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="white: stylize, black: keep the content")] = None,
    masks: Annotated[Optional[str], typer.Option(help="one mask per style image, comma-separated paths")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", hidden=True, help="same as --precision fp16")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (stages, tiles, device, estimated peak memory) and exit")] = False,
    save_every: Annotated[int, typer.Option(min=0, help="write an intermediate image every N evaluations")] = 0,
    *, run: dict[str, Any], common: Common,
) -> None:
    """Stylize CONTENT with STYLE(s); with no arguments, the bundled Tübingen × Starry Night demo."""
    content, styles, demo = _inputs_or_demo(content, styles)
    if fp16 and common.precision not in ("auto", "fp16"):
        raise fail(f"--fp16 contradicts --precision {common.precision}", EXIT_USAGE)
    run["init"], init_path = _init(run["init"])
    if demo and common.preset is None and run["size"] is None and run["scales"] is None:
        run["size"] = DEMO_SIZE
    settings = common.settings(run, len(styles))
    job = StylizeJob(content, styles, output, settings, _mask_paths(mask, masks, len(styles)), init_path, common.max_pixels, save_every)
    job.check()
    if demo:
        common.say(f"no inputs given: stylizing the bundled Tübingen photo with The Starry Night at {settings.size} px → {output}")
    stylizer = common.open(config=common.config("fp16" if fp16 else None))
    if dry_run:
        _print_plan(job.plan(stylizer), stylizer, settings)
    # Refuse a size that cannot fit before anything of that size is allocated.
    from ..runtime.plan import check_plan

    check_plan(job.plan(stylizer))
    if dry_run:
        raise typer.Exit(0)
    job.load_images()
    common.say(f"device: {stylizer.engine.provider} ({stylizer.engine.threads} threads), models: {stylizer.engine.folder}")
    _finish(job, stylizer, common)


def _finish(job: StylizeJob, stylizer: Any, common: Common) -> None:
    """Run with progress, write the image (also when interrupted or stopped by faults), exit."""
    from .progress import ProgressView, terms_text

    try:
        with sigterm_as_interrupt(), ProgressView(err, job.settings.total_evaluations(), "stylizing", common.quiet) as view:
            result = job.run(stylizer, view, view.tile)
    except Interrupted as e:
        if e.partial is None:
            common.say("interrupted before the first evaluation: nothing written")
            raise typer.Exit(interrupt_code(e)) from None
        job.save(e.partial)
        common.say(f"interrupted: wrote the best image so far ({e.partial.evaluations} evaluations) to {job.output}")
        raise typer.Exit(interrupt_code(e)) from None
    job.save(result)
    h, w = job.output_size()
    common.say(
        f"wrote {job.output} ({w}x{h}): {result.evaluations} evaluations in {duration(result.elapsed)} "
        f"({result.evaluations / max(result.elapsed, 1e-9):.2f}/s), loss {result.loss:.4g} ({terms_text(result.terms)})"
    )
    if result.error:
        raise fail(f"{result.error}; kept the best image in {job.output}", EXIT_FAULTS)
