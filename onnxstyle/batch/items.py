"""The items of a batch: every image of the input folder, its output, and what is done.

An output that exists is complete (outputs are written atomically), so a rerun skips it:
that is all resuming takes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

READABLE = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
EXIT_MIXED = 1  # failures of several kinds: the generic error code


@dataclass(frozen=True)
class Item:
    name: str  # the input's file name, as reports show it
    path: Path
    output: Path


def plan_items(input_dir: Path, out_dir: Path, ext: str) -> list[Item]:
    """One item per image file of ``input_dir`` (not recursive, hidden files skipped), in
    name order. Outputs are named after the input's stem; where two inputs share a stem
    (a.jpg, a.png) their full names are kept (a.jpg.png) so neither overwrites the other."""
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in READABLE and not p.name.startswith("."))
    stems = Counter(p.stem for p in files)
    return [Item(p.name, p, out_dir / f"{p.stem if stems[p.stem] == 1 else p.name}{ext}") for p in files]


@dataclass
class Tally:
    """The running account of a batch, for its progress lines and its summary."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (name, message, exit code)
    evaluations: int = 0

    @property
    def finished(self) -> int:
        return self.skipped + self.done + len(self.failed)

    def exit_code(self) -> int:
        """0 when nothing failed; else the failures' exit code if they share one (6: an
        unreadable image, 9: numerical faults, …), or 1 for a mix."""
        codes = {code for _, _, code in self.failed}
        if not codes:
            return 0
        return codes.pop() if len(codes) == 1 else EXIT_MIXED

    def summary(self, seconds: float) -> str:
        rate = 60.0 * self.done / seconds if seconds > 0 and self.done else 0.0
        text = f"batch: {self.done} done, {self.skipped} skipped (output exists), {len(self.failed)} failed of {self.total}"
        return text + (f"; {rate:.2f} images/min" if rate else "")
