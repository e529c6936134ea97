"""Contact sheets: many results of a parameter sweep laid out in one labelled image.

Layout, in pixels (y down, x right), for ``n`` panels of ``panel_h x panel_w`` in
``columns`` columns and ``rows = ceil(n / columns)`` rows::

    top  = pad + title_h + header_h
    left = pad + side_w
    panel i (row r = i // columns, column c = i % columns) has its top-left corner at
        y = top  + r * (panel_h + label_h + pad)
        x = left + c * (panel_w + pad)
    its label band is the ``label_h`` rows right below it, exactly as wide as the panel;
    sheet size: H = top + rows * (panel_h + label_h + pad), W = left + columns * (panel_w + pad)

``title_h`` (title band), ``header_h`` (column-label band) and ``side_w`` (row-label band,
text reading bottom to top) each include the ``pad`` that follows them and are 0 when
absent. ``label_h`` depends only on ``panel_w`` (see ``label_height``); ``sheet_layout``
computes all of it and is what ``contact_sheet`` itself uses.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..runtime.image_io import resize_to

__all__ = [
    "SheetLayout",
    "ascii_safe",
    "contact_sheet",
    "label_height",
    "sheet_geometry",
    "sheet_layout",
]

# Text sizes are "scales": the font's size in pixels is FONT_PX times the scale.
FONT_PX = 30
BACKGROUND = 0.18
BAND = 0.06
TEXT = 1.0
# Below 10 px the anti-aliased glyphs blur into grey; shorten the text instead of shrinking it.
MIN_SCALE = 10 / FONT_PX


# Typographic punctuation that sweep labels pick up from editors and shells; a close ASCII
# look-alike reads better than '?'.
_PUNCTUATION = str.maketrans(
    {
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2212": "-",  # minus sign
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u00d7": "x",  # multiplication sign
    }
)


def ascii_safe(text: str) -> str:
    """``text`` reduced to printable ASCII: accents dropped (é -> e), dashes and quotes
    simplified, anything else -> '?'.

    Pillow's built-in font (the only one sure to be there, no font files are looked up)
    covers little past ASCII and draws other code points as boxes, so do the replacement
    deliberately and one character per character.
    """
    out = []
    for ch in unicodedata.normalize("NFKD", text.translate(_PUNCTUATION)):
        if unicodedata.combining(ch):
            continue
        if ch in "\t\r\n":
            out.append(" ")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def _label_scale(panel_w: int) -> float:
    # Grows with the panel so large sheets stay readable, but stays modest so that a
    # typical "name=value" label fits a panel of a few hundred pixels.
    return min(0.7, max(0.35, panel_w / 400.0))


def _margin(scale: float) -> int:
    return max(2, int(round(6 * scale)))


@lru_cache(maxsize=64)
def _font_px(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 embeds a scalable font (FreeType); a Pillow built without FreeType
    # returns its one bitmap size instead, which still labels a sheet.
    return ImageFont.load_default(size=px)


def _font(scale: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return _font_px(max(1, round(FONT_PX * scale)))


def _line_height(scale: float) -> int:
    """Top of the ascenders to the bottom of the descenders, text drawn at y = 0."""
    return int(math.ceil(_font(scale).getbbox("Ag")[3]))


def _band_height(scale: float) -> int:
    return _line_height(scale) + 2 * _margin(scale)


def label_height(panel_w: int) -> int:
    """Height of the label band under a panel ``panel_w`` wide (also the row/column label bands)."""
    return _band_height(_label_scale(panel_w))


def _title_scale(panel_w: int) -> float:
    return min(1.0, 1.5 * _label_scale(panel_w))


def _text_width(text: str, scale: float) -> int:
    return int(math.ceil(_font(scale).getbbox(text)[2])) if text else 0


def _fit_text(text: str, width: int, scale: float) -> tuple[str, float]:
    """Shrink ``scale`` (down to MIN_SCALE) and then shorten ``text`` with '...' until it fits."""
    if not text:
        return text, scale
    tw = _text_width(text, scale)
    if tw <= width:
        return text, scale
    scale = max(MIN_SCALE, scale * width / tw)
    if _text_width(text, scale) <= width:
        return text, scale
    for keep in range(len(text) - 1, -1, -1):
        candidate = text[:keep].rstrip() + "..."
        if _text_width(candidate, scale) <= width:
            return candidate, scale
    return "", scale


def _text_mask(text: str, height: int, width: int, scale: float) -> np.ndarray:
    """Coverage (float32 HxW in [0, 1]) of ``text`` centred in a ``height x width`` band."""
    # Drawn into an 8-bit mask (Pillow anti-aliases text there) and blended afterwards:
    # the panels keep their float precision.
    mask = Image.new("L", (width, height), 0)
    text, scale = _fit_text(ascii_safe(text), width - 2 * _margin(scale), scale)
    if text:
        x = max(0, (width - _text_width(text, scale)) // 2)
        y = max(0, (height - _line_height(scale)) // 2)
        ImageDraw.Draw(mask).text((x, y), text, fill=255, font=_font(scale))
    return np.asarray(mask, np.float32) / 255.0


def _draw_band(canvas: np.ndarray, y: int, x: int, mask: np.ndarray) -> None:
    h, w = mask.shape
    m = mask[..., None]
    canvas[y : y + h, x : x + w] = BAND * (1.0 - m) + TEXT * m


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a sheet; see the module docstring for the formulas."""

    n: int
    columns: int
    panel_h: int
    panel_w: int
    pad: int
    label_h: int
    title_h: int = 0
    header_h: int = 0
    side_w: int = 0

    @property
    def rows(self) -> int:
        return math.ceil(self.n / self.columns)

    @property
    def top(self) -> int:
        return self.pad + self.title_h + self.header_h

    @property
    def left(self) -> int:
        return self.pad + self.side_w

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the whole sheet."""
        return (
            self.top + self.rows * (self.panel_h + self.label_h + self.pad),
            self.left + self.columns * (self.panel_w + self.pad),
        )

    def panel_origin(self, index: int) -> tuple[int, int]:
        """(y, x) of the top-left pixel of panel ``index``; its label band starts at y + panel_h."""
        if not 0 <= index < self.n:
            raise IndexError(f"panel {index} out of range for {self.n} panels")
        r, c = divmod(index, self.columns)
        return (
            self.top + r * (self.panel_h + self.label_h + self.pad),
            self.left + c * (self.panel_w + self.pad),
        )


def sheet_geometry(
    n: int,
    columns: int,
    panel_hw: tuple[int, int],
    pad: int,
    label_h: int,
    title_h: int = 0,
    header_h: int = 0,
    side_w: int = 0,
) -> tuple[int, int]:
    """(H, W) of a sheet; the band sizes include their following pad (0 when absent)."""
    return SheetLayout(n, columns, panel_hw[0], panel_hw[1], pad, label_h, title_h, header_h, side_w).size


def sheet_layout(
    n: int,
    columns: int,
    panel_hw: tuple[int, int],
    pad: int = 8,
    *,
    title: bool = False,
    row_labels: bool = False,
    col_labels: bool = False,
) -> SheetLayout:
    """The layout ``contact_sheet`` uses for ``n`` panels of ``panel_hw`` and the optional bands."""
    if n < 1:
        raise ValueError("a contact sheet needs at least one panel")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    if pad < 0:
        raise ValueError(f"pad must not be negative, got {pad}")
    ph, pw = panel_hw
    if ph < 1 or pw < 1:
        raise ValueError(f"panels must be at least 1x1, got {panel_hw}")
    label_h = label_height(pw)
    return SheetLayout(
        n=n,
        columns=columns,
        panel_h=ph,
        panel_w=pw,
        pad=pad,
        label_h=label_h,
        title_h=_band_height(_title_scale(pw)) + pad if title else 0,
        header_h=label_h + pad if col_labels else 0,
        side_w=label_h + pad if row_labels else 0,
    )


def _as_rgb(panel: np.ndarray, index: int) -> np.ndarray:
    arr = np.asarray(panel, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"panel {index} must be HxWx3 RGB (or HxW grey), got shape {arr.shape}")
    return arr


def _resize(panel: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    if panel.shape[:2] == (h, w):
        return panel
    # Bicubic (enlarging) overshoots, hence the clip.
    return resize_to(panel, h, w)


def contact_sheet(
    panels: list[np.ndarray],
    labels: list[str],
    columns: int,
    title: str | None = None,
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    pad: int = 8,
) -> np.ndarray:
    """Panels in a grid of ``columns`` columns, each labelled underneath; RGB float32 in [0, 1].

    Every panel is resized to the first panel's size (a sweep's results normally share it;
    a differing one would otherwise break the grid). Labels are drawn white on a dark band
    and shrunk, then shortened with '...', to fit the panel width; non-ASCII characters
    are replaced (see ``ascii_safe``). ``row_labels`` (one per row) go on a band to the
    left, ``col_labels`` (one per column) on a band above, ``title`` on a band on top.
    """
    if len(labels) != len(panels):
        raise ValueError(f"{len(panels)} panels but {len(labels)} labels")
    if not panels:
        raise ValueError("a contact sheet needs at least one panel")
    rgb = [_as_rgb(p, i) for i, p in enumerate(panels)]
    hw = (rgb[0].shape[0], rgb[0].shape[1])
    layout = sheet_layout(
        len(rgb),
        columns,
        hw,
        pad,
        title=title is not None,
        row_labels=row_labels is not None,
        col_labels=col_labels is not None,
    )
    if row_labels is not None and len(row_labels) != layout.rows:
        raise ValueError(f"{layout.rows} rows but {len(row_labels)} row labels")
    if col_labels is not None and len(col_labels) != columns:
        raise ValueError(f"{columns} columns but {len(col_labels)} column labels")

    ph, pw = hw
    lh = layout.label_h
    label_scale = _label_scale(pw)
    sheet_h, sheet_w = layout.size
    canvas = np.full((sheet_h, sheet_w, 3), BACKGROUND, np.float32)

    if title is not None:
        band_w = sheet_w - 2 * pad
        if band_w > 0:
            _draw_band(canvas, pad, pad, _text_mask(title, layout.title_h - pad, band_w, _title_scale(pw)))
    if col_labels is not None:
        for c, text in enumerate(col_labels):
            x = layout.left + c * (pw + pad)
            _draw_band(canvas, pad + layout.title_h, x, _text_mask(text, lh, pw, label_scale))
    if row_labels is not None:
        for r, text in enumerate(row_labels):
            y = layout.top + r * (ph + lh + pad)
            # Drawn horizontally along the panel height, then turned to read bottom to top.
            mask = np.ascontiguousarray(np.rot90(_text_mask(text, lh, ph, label_scale)))
            _draw_band(canvas, y, pad, mask)
    for i, (panel, text) in enumerate(zip(rgb, labels)):
        y, x = layout.panel_origin(i)
        canvas[y : y + ph, x : x + pw] = np.clip(_resize(panel, hw), 0.0, 1.0)
        _draw_band(canvas, y + ph, x, _text_mask(text, lh, pw, label_scale))
    return canvas


# The narrowest panel (px) whose label stays legible: smaller panels are enlarged.
MIN_LABELLED_PANEL = 240


def enlarge_for_labels(panels: list[np.ndarray], min_width: int = MIN_LABELLED_PANEL) -> list[np.ndarray]:
    """Small panels enlarged by a whole factor (nearest neighbour: pixels stay honest)."""
    if not panels or panels[0].shape[1] >= min_width:
        return panels
    k = -(-min_width // panels[0].shape[1])
    return [np.repeat(np.repeat(p, k, axis=0), k, axis=1) for p in panels]
