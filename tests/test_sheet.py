"""Contact sheets: panels land where the documented layout says, labels are drawn, odd input
is tolerated. Panel positions are recomputed here from the module docstring's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from onnxstyle.commands.sheet import ascii_safe, contact_sheet, label_height, sheet_geometry, sheet_layout

COLOURS = [
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.0, 1.0, 0.0),
    (0.0, 1.0, 1.0),
    (1.0, 0.0, 1.0),
]
PH, PW, PAD = 40, 64, 8


def solid(colour: tuple[float, float, float], h: int = PH, w: int = PW) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.float32), (h, w, 3)).copy()


def expected_origin(i: int, columns: int, label_h: int, top_extra: int = 0, left_extra: int = 0) -> tuple[int, int]:
    r, c = divmod(i, columns)
    return PAD + top_extra + r * (PH + label_h + PAD), PAD + left_extra + c * (PW + PAD)


def white_pixels(region: np.ndarray) -> int:
    return int((region.min(axis=2) > 0.8).sum())


def test_grid_places_every_panel() -> None:
    panels = [solid(c) for c in COLOURS]
    sheet = contact_sheet(panels, [f"w={i}" for i in range(6)], columns=3, pad=PAD)
    lh = label_height(PW)
    assert sheet.dtype == np.float32 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.min() >= 0.0 and sheet.max() <= 1.0
    assert sheet.shape[:2] == (PAD + 2 * (PH + lh + PAD), PAD + 3 * (PW + PAD))
    assert sheet.shape[:2] == sheet_geometry(6, 3, (PH, PW), PAD, lh, 0)
    for i, colour in enumerate(COLOURS):
        y, x = expected_origin(i, 3, lh)
        assert sheet_layout(6, 3, (PH, PW), PAD).panel_origin(i) == (y, x)
        np.testing.assert_allclose(sheet[y + PH // 2, x + PW // 2], colour, atol=1e-6)
        # The whole panel, corners included, is exactly where the formula says.
        np.testing.assert_allclose(sheet[y, x], colour, atol=1e-6)
        np.testing.assert_allclose(sheet[y + PH - 1, x + PW - 1], colour, atol=1e-6)
        assert not np.allclose(sheet[y - 1, x - 1], colour)
        band = sheet[y + PH : y + PH + lh, x : x + PW]
        assert white_pixels(band) > 5, f"label {i} has no text"
        # The band is dark apart from the text.
        assert np.median(band) < 0.2


def test_title_and_row_and_column_labels_shift_the_grid() -> None:
    panels = [solid(c) for c in COLOURS]
    sheet = contact_sheet(
        panels,
        ["a"] * 6,
        columns=3,
        title="content weight x style weight",
        row_labels=["sw=1e4", "sw=1e5"],
        col_labels=["cw=1", "cw=5", "cw=10"],
        pad=PAD,
    )
    layout = sheet_layout(6, 3, (PH, PW), PAD, title=True, row_labels=True, col_labels=True)
    lh = label_height(PW)
    assert layout.label_h == lh and layout.header_h == lh + PAD and layout.side_w == lh + PAD
    assert layout.title_h > PAD
    top_extra = layout.title_h + lh + PAD
    left_extra = lh + PAD
    assert sheet.shape[:2] == (PAD + top_extra + 2 * (PH + lh + PAD), PAD + left_extra + 3 * (PW + PAD))
    for i, colour in enumerate(COLOURS):
        y, x = expected_origin(i, 3, lh, top_extra, left_extra)
        np.testing.assert_allclose(sheet[y + PH // 2, x + PW // 2], colour, atol=1e-6)
    assert white_pixels(sheet[PAD : PAD + layout.title_h - PAD, PAD:-PAD]) > 10
    y0 = PAD + layout.title_h
    assert white_pixels(sheet[y0 : y0 + lh, PAD + left_extra : PAD + left_extra + PW]) > 5
    assert white_pixels(sheet[PAD + top_extra : PAD + top_extra + PH, PAD : PAD + lh]) > 5


def test_panels_of_other_sizes_are_resized() -> None:
    panels = [solid(COLOURS[0]), solid(COLOURS[1], 100, 30), solid(COLOURS[2], 10, 200), solid(COLOURS[3], 21, 33)]
    sheet = contact_sheet(panels, ["first", "tall", "wide", "small"], columns=2, pad=PAD)
    lh = label_height(PW)
    assert sheet.shape[:2] == (PAD + 2 * (PH + lh + PAD), PAD + 2 * (PW + PAD))
    for i in range(4):
        y, x = expected_origin(i, 2, lh)
        np.testing.assert_allclose(sheet[y : y + PH, x : x + PW], solid(COLOURS[i]), atol=1e-5)


def test_incomplete_last_row_and_grey_panels() -> None:
    panels = [np.full((PH, PW), 0.5, np.float32)] * 5
    sheet = contact_sheet(panels, [str(i) for i in range(5)], columns=3, pad=PAD)
    lh = label_height(PW)
    assert sheet.shape[:2] == (PAD + 2 * (PH + lh + PAD), PAD + 3 * (PW + PAD))
    y, x = expected_origin(5, 3, lh)  # the empty slot stays background
    assert abs(float(sheet[y + PH // 2, x + PW // 2, 0]) - 0.5) > 0.1


def test_non_ascii_and_long_labels_do_not_crash() -> None:
    panels = [solid(c) for c in COLOURS[:3]]
    labels = ["Tübingen – 風景 🎨", "x" * 300, ""]
    sheet = contact_sheet(panels, labels, columns=3, title="Größe ✓", pad=PAD)
    assert np.isfinite(sheet).all()
    lh = label_height(PW)
    top_extra = sheet_layout(3, 3, (PH, PW), PAD, title=True).title_h
    for i in range(2):
        y, x = expected_origin(i, 3, lh, top_extra)
        assert white_pixels(sheet[y + PH : y + PH + lh, x : x + PW]) > 5


def test_ascii_safe() -> None:
    assert ascii_safe("Tübingen") == "Tubingen"
    assert ascii_safe("a\tb\nc") == "a b c"
    assert ascii_safe("風") == "?"
    assert ascii_safe("a – b × 2") == "a - b x 2"
    assert ascii_safe("style=1e5, cw=0.5") == "style=1e5, cw=0.5"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        contact_sheet([], [], columns=2)
    with pytest.raises(ValueError):
        contact_sheet([solid(COLOURS[0])], ["a", "b"], columns=2)
    with pytest.raises(ValueError):
        contact_sheet([solid(COLOURS[0])], ["a"], columns=0)
    with pytest.raises(ValueError):
        contact_sheet([solid(COLOURS[0])] * 2, ["a", "b"], columns=2, col_labels=["only one"])
    with pytest.raises(ValueError):
        contact_sheet([np.zeros((4, 4, 4), np.float32)], ["a"], columns=1)
