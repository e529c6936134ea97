"""Drawing progress for people: a rich bar on a terminal, whole plain lines in a log.

The runtime hands over :class:`~onnxstyle.runtime.optimize.Iterate` data; this module only
draws it. Without a terminal (a log file, a pipe, systemd's journal) a bar would be cut to
the width of nothing, so plain lines are printed instead, at a steady interval.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:  # the CLI stays light: no scipy for drawing a bar
    from ..runtime.optimize import Iterate

# Seconds between plain lines; a log gets a line every 10 s and one at the end.
PLAIN_INTERVAL = float(os.environ.get("ONNXSTYLE_PROGRESS_INTERVAL", "10"))


def _clock(sec: float) -> str:
    sec = max(0, int(round(sec)))
    return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}" if sec >= 3600 else f"{sec // 60}:{sec % 60:02d}"


def terms_text(terms: dict[str, float]) -> str:
    c = sum(v for k, v in terms.items() if k.startswith("loss_content"))
    s = sum(v for k, v in terms.items() if k.startswith("loss_style"))
    t = terms.get("loss_tv", 0.0)
    return f"content {c:.3g} style {s:.3g}" + (f" tv {t:.3g}" if t else "")


def plain_line(label: str, it: "Iterate", total: int) -> str:
    """``stylizing 120/300 40% stage 1/2 2.72 eval/s elapsed 0:44 eta 1:06 loss 1.234 (content … style …)``."""
    total = it.total or total
    rate = it.step / max(it.elapsed, 1e-9)
    eta = (total - it.step) / rate if rate > 0 else 0.0
    stage = f" stage {it.stage}/{it.stages}" if it.stages > 1 else ""
    pct = 100 * it.step / max(total, 1)
    return (
        f"{label} {it.step}/{total} {pct:.0f}%{stage} {rate:.2f} eval/s elapsed {_clock(it.elapsed)} "
        f"eta {_clock(eta)} loss {it.loss:.4g} ({terms_text(it.terms)})"
    )


class ProgressView:
    """A callable for Iterates, used as a context manager around the run."""

    def __init__(self, console: Console, total: int, label: str, quiet: bool = False, interval: float = PLAIN_INTERVAL) -> None:
        self.console = console
        self.total = total
        self.label = label
        self.quiet = quiet
        self.interval = interval
        self.tty = console.is_terminal
        self._bar: Any = None
        self._task: Any = None
        self._last_print = float("-inf")
        self._last: "Iterate | None" = None
        self._printed: "Iterate | None" = None

    def __enter__(self) -> "ProgressView":
        if not self.quiet and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"[bold]{escape(self.label)}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[terms]}"),
                console=self.console, transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, rate="", terms="")
        return self

    def __call__(self, it: "Iterate") -> None:
        if self.quiet:
            return
        self._last = it
        if self._bar is not None:
            rate = f"{it.step / max(it.elapsed, 1e-9):.2f} eval/s"
            stage = f"stage {it.stage}/{it.stages} " if it.stages > 1 else ""
            self._bar.update(self._task, completed=it.step, total=it.total or self.total, rate=rate, terms=f"{stage}loss {it.loss:.4g} ({terms_text(it.terms)})")
            return
        now = time.monotonic()
        if now - self._last_print >= self.interval:
            self._last_print = now
            self._printed = it
            self.console.print(escape(plain_line(self.label, it, self.total)), soft_wrap=True)

    def tile(self, label: str, index: int, count: int) -> None:
        """Progress inside one evaluation of a tiled stage (each pass visits every tile)."""
        if self.quiet:
            return
        text = f"tiles: {label} {index}/{count}"
        if self._bar is not None:
            self._bar.update(self._task, rate=text)
            return
        now = time.monotonic()
        if now - self._last_print >= self.interval:
            self._last_print = now
            where = f"{self.label} {self._last.step}/{self._last.total or self.total}" if self._last else self.label
            self.console.print(escape(f"{where} {text}"), soft_wrap=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)
        elif not self.quiet and self._last is not None and self._last is not self._printed:
            # The last step always gets its line, so a log ends with where the run stopped.
            self.console.print(escape(plain_line(self.label, self._last, self.total)), soft_wrap=True)
