"""Exact tiled evaluation (issue 11): tiled loss and gradient equal the untiled ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxstyle.export.exporter import export
from onnxstyle.runtime.engine import Engine, TileGrad
from onnxstyle.runtime.settings import EngineConfig, RunSettings
from onnxstyle.runtime.tiling import (
    TiledObjective, halo_for, plan_tiles, receptive_reach, temporal_loss_grad, tiled_features, tv_loss_grad,
)
from onnxstyle.spec import LossSpec, preset_spec
from onnxstyle.exportdir import ExportSettings

CPU = EngineConfig(device="cpu")  # fp32 on both sides: only the tiling differs


def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(9 * xx + 3 * c) * np.cos(7 * yy - c) for c in range(3)])
    # Off 0 and 1: clipped flat patches tie in max-pooling (see the README's caveat).
    return (0.05 + 0.9 * np.clip(img + 0.1 * rng.standard_normal((3, h, w)), 0, 1))[None].astype(np.float32)


@pytest.fixture(scope="module")
def receptive_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export whose content tap is conv5_1 (before ReLU), to see every position that moves."""
    spec = LossSpec(content_layers=("conv5_1",), style_layers=("relu1_1",))
    return export(ExportSettings(spec, "custom"), tmp_path_factory.mktemp("rf") / "m", validate=False).folder


def test_halo_covers_the_measured_receptive_field(receptive_export: Path) -> None:
    """Perturb one pixel and see which conv5_1 positions change: exactly those whose receptive
    field, computed from the layer table, holds the pixel."""
    before, after, stride = receptive_reach("conv5_1")
    assert (before, after, stride) == (70, 85, 16) and before + after + 1 == 156
    assert receptive_reach("relu5_1") == (70, 85, 16) and halo_for(LossSpec()) == (96, 16)
    assert receptive_reach("conv3_1") == (10, 13, 4)  # the torch-tutorial preset's deepest tap
    e = Engine(receptive_export, CPU)
    x = photo(320, 336, 0)
    base = e.features(x)["content_conv5_1"][0]
    for k, (y, xpix) in enumerate(((150, 150), (161, 93))):
        moved = x.copy()
        moved[0, :, y, xpix] += 5.0
        diff = np.abs(e.features(moved)["content_conv5_1"][0] - base).max(axis=0)
        rows, cols = np.nonzero(diff > 1e-3 * np.abs(base).max())
        # Position p sees pixels [16p − 70, 16p + 85]: only those can change. At the field's
        # very edge a ReLU or a max-pool may block the one path there, so the measured field
        # is within the computed one, and here (first pixel) exactly it: the bound is tight.
        bounds = (-(-(y - after) // stride), (y + before) // stride, -(-(xpix - after) // stride), (xpix + before) // stride)
        measured = (rows.min(), rows.max(), cols.min(), cols.max())
        assert bounds[0] <= measured[0] and measured[1] <= bounds[1] and bounds[2] <= measured[2] and measured[3] <= bounds[3]
        if k == 0:
            assert measured == bounds


def test_plan_aligns_tiles_to_the_stride_and_covers_the_image() -> None:
    plan = plan_tiles(250, 231, LossSpec(), 100)  # rounded down to 96
    assert plan.inner == 96 and plan.halo == 96 and plan.grid == (3, 3)
    cover = np.zeros((250, 231), int)
    for t in plan.tiles:
        assert t.y0 % 16 == 0 and t.x0 % 16 == 0 and t.iy0 % 16 == 0 and t.ix0 % 16 == 0
        assert t.y0 == max(0, t.iy0 - 96) and t.y1 == min(250, t.iy1 + 96)
        cover[t.iy0 : t.iy1, t.ix0 : t.ix1] += 1
    assert (cover == 1).all()  # inner regions partition the image


def _spec_for(case: str) -> LossSpec:
    if case == "gatys-avg":
        return LossSpec(pooling="avg", tv_weight=0.5)
    if case == "tf-tutorial":
        return preset_spec("tf-tutorial")  # its TV is Σ|Δ|, across tile borders
    if case == "torch-tutorial":
        return preset_spec("torch-tutorial").replace(tv_weight=0.3)
    return LossSpec(tv_weight=0.5)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tile-exports")
    cases = ("gatys", "gatys-avg", "tf-tutorial", "torch-tutorial")
    return {c: export(ExportSettings(_spec_for(c), c), root / c, validate=False).folder for c in cases}


def _untiled_and_tiled(folder: Path, h: int, w: int, inner: int, masks: int = 0, temporal: bool = False) -> tuple:
    e = Engine(folder, CPU)
    spec = e.manifest.spec
    content, style, x = photo(h, w, 1), photo(w - 9, h + 7, 2), photo(h, w, 3)
    regions = max(1, masks)
    ct, st = e.features(content), e.features(style)
    targets = {k: v for k, v in ct.items() if k.startswith("content_")}
    for n in spec.style_layers:
        g = st[f"gram_{n}"]
        targets[f"gram_{n}"] = np.concatenate([g] + [ct[f"gram_{n}"]] * (regions - 1))
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, None, None, :].repeat(h, 2)
    guide = np.concatenate([ramp, 1 - ramp**2]) if masks == 2 else None
    temp = (np.clip(x[:, :, ::-1] + 0.1, 0, 1).astype(np.float32), ramp[:1] * 0.8) if temporal else None
    feeds = {**targets, "guide": guide if guide is not None else np.ones((1, 1, h, w), np.float32)}
    if temp:
        feeds.update(temporal_target=temp[0], temporal_map=temp[1])
    weights = {**e.weight_defaults, "temporal_weight": 50.0}
    ref = e.loss_grad(x, feeds, {"temporal_weight": 50.0})
    plan = plan_tiles(h, w, spec, inner)
    assert plan.grid[0] >= 2 and plan.grid[1] >= 2
    assert any(t.shape != (h, w) for t in plan.tiles)  # some tile sees only part of the image
    # The content targets, assembled from tiles too, are the untiled ones.
    tf = tiled_features(spec, plan, e.features, content)
    for n in spec.content_layers:
        np.testing.assert_allclose(tf[f"content_{n}"], ct[f"content_{n}"], atol=1e-5 * np.abs(ct[f"content_{n}"]).max())
    obj = TiledObjective(spec, plan, e.features, TileGrad(e), targets, weights, guide, temp)
    return ref, obj(x)


def _assert_equal(ref, tiled) -> None:  # type: ignore[no-untyped-def]
    loss, grad, terms = tiled
    assert loss == pytest.approx(ref.loss, rel=1e-4)  # the untiled reference sums in float32
    for k, v in ref.terms.items():
        assert terms.get(k, 0.0) == pytest.approx(v, rel=1e-4, abs=1e-7 * ref.loss), k
    g, rg = grad.astype(np.float64), ref.grad.astype(np.float64)
    assert np.abs(g - rg).max() <= 1e-4 * np.abs(rg).max()
    assert (g * rg).sum() / (np.linalg.norm(g) * np.linalg.norm(rg)) >= 0.99999


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gatys", "gatys-avg", "tf-tutorial", "torch-tutorial"])
def test_tiled_loss_and_gradient_equal_the_untiled(case: str, exports: dict[str, Path]) -> None:
    # Odd sizes, 3x3 tiles of 64 px (the tutorial's shallow net: 16 px tiles, a 16 px halo).
    inner = 16 if case == "torch-tutorial" else 64
    ref, tiled = _untiled_and_tiled(exports[case], 190, 171, inner) if case != "torch-tutorial" else _untiled_and_tiled(exports[case], 61, 53, inner)
    _assert_equal(ref, tiled)


@pytest.mark.slow
def test_tiled_guided_masks_and_temporal_term(exports: dict[str, Path]) -> None:
    ref, tiled = _untiled_and_tiled(exports["gatys"], 177, 190, 64, masks=2, temporal=True)
    assert ref.terms["loss_temporal"] > 0
    _assert_equal(ref, tiled)


@pytest.mark.slow
def test_a_tiled_run_matches_the_untiled_run(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    from onnxstyle.runtime.stylizer import Stylizer

    st = Stylizer(caffe_export, CPU)
    s = RunSettings(size=160, scales=(160,), iterations=6)
    untiled = st.run(tubingen, [starry], s.replace(tile="off"))
    seen: list[tuple[str, int, int]] = []
    tiled = st.run(tubingen, [starry], s.replace(tile=64), on_tile=lambda *a: seen.append(a))
    assert st.plan(tubingen.shape[:2], s.replace(tile=64)).stages[0].tiles.grid == (2, 3)
    assert tiled.loss == pytest.approx(untiled.loss, rel=5e-3)
    assert np.abs(tiled.image - untiled.image).mean() <= 2 / 255
    assert ("grams", 6, 6) in seen and ("gradient", 6, 6) in seen


@pytest.mark.slow
def test_a_tiled_run_on_the_default_engine(caffe_export: Path, tubingen: np.ndarray, starry: np.ndarray) -> None:
    """The default backend (OpenVINO bf16 on CPUs that have it) serves the tile graphs too, compiled
    for every size (tiles at the image's edges are smaller)."""
    from onnxstyle.runtime.stylizer import Stylizer

    st = Stylizer(caffe_export)
    r = st.run(tubingen, [starry], RunSettings(size=160, scales=(160,), iterations=5, tile=64))
    assert r.evaluations == 5 and np.isfinite(r.image).all() and r.loss < r.history[0]


@pytest.mark.parametrize("kind", ["mean_sq", "sum_abs", "keras"])
def test_whole_image_terms_in_bands_equal_autograd(kind: str) -> None:
    """TV and the temporal term are computed in bands of rows (their float64 temporaries stay
    small at 4096 px); across band edges, loss and gradient equal torch autograd's on the
    definitions, and the gradient is added to what ``out`` holds."""
    import torch

    spec = LossSpec(tv=kind, tv_scale=255.0 if kind == "keras" else 1.0)
    x = photo(23, 31, 5)
    target, cmap = photo(23, 31, 6), photo(23, 31, 7)[:, :1]
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    v = xt * spec.tv_scale
    if kind == "keras":
        tv = ((v[:, :, :-1, :-1] - v[:, :, 1:, :-1]) ** 2 + (v[:, :, :-1, :-1] - v[:, :, :-1, 1:]) ** 2).pow(1.25).sum()
    elif kind == "sum_abs":
        tv = (v[:, :, 1:] - v[:, :, :-1]).abs().sum() + (v[:, :, :, 1:] - v[:, :, :, :-1]).abs().sum()
    else:
        tv = ((v[:, :, 1:] - v[:, :, :-1]) ** 2).mean() + ((v[:, :, :, 1:] - v[:, :, :, :-1]) ** 2).mean()
    temporal = (torch.tensor(cmap, dtype=torch.float64) * (xt - torch.tensor(target, dtype=torch.float64)) ** 2).sum() / x.size
    (0.7 * tv + 3.0 * temporal).backward()
    want = xt.grad.numpy()
    for rows in (1, 4, 7, 64):  # one row per band, edges everywhere, uneven last band, one band
        out = np.full(x.shape, 1e-3, np.float32)
        loss_tv, g = tv_loss_grad(spec, x, 0.7, out=out, rows=rows)
        loss_t, g = temporal_loss_grad(x, target, cmap, 3.0, out=g, rows=rows)
        assert g is out
        assert loss_tv == pytest.approx(0.7 * tv.item(), rel=1e-9) and loss_t == pytest.approx(3.0 * temporal.item(), rel=1e-9)
        np.testing.assert_allclose(g.astype(np.float64) - np.float32(1e-3), want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    assert tv_loss_grad(spec, x, 0.0)[0] == 0.0 and not tv_loss_grad(spec, x, 0.0)[1].any()
