"""Exact tiled evaluation: the loss and gradient of the whole image, with memory bounded by a tile.

A Gram matrix is a sum over positions (Galerne et al., "Scaling Painting Style Transfer",
2022), so an image can be evaluated tile by tile in two passes and give *exactly* the
untiled loss and gradient:

1. **Statistics.** Each tile (its inner region plus a halo) runs the features graph with
   ``guide = mask × inner``: the raw Gram sums S_l = Σ_p (f_p m_p)(f_p m_p)ᵀ and masses
   Σ_p m_p² of its inner region add up to the image's; content maps are cropped to the inner
   region. The loss and ∂loss/∂S_l follow in numpy from the sums.
2. **Gradient.** Each tile runs ``tile_grad`` with the *global* ∂loss/∂S_l: tap gradients are
   non-zero on the inner region only, and the tiles' gradients, summed over their extents
   (overlap-add), are the untiled gradient.

Why this is exact: an inner position's features depend on image pixels up to ``reach``
away (the receptive field of the deepest layer, computed below); a halo at least that wide
makes them exact, and every intermediate activation on a gradient path from an inner
position lies within that position's receptive field, so it is exact too. Tiles start on
multiples of the network's total stride, so every pooling grid matches the untiled one.
Total variation and the temporal term are per-pixel and are computed on the whole image
here, in numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..spec import LossSpec
from ..layers import LAYER_CHANNELS, LAYER_INDEX, LAYERS, layer_stride

EPS = 1e-8  # as in the graphs


def receptive_reach(deepest: str) -> tuple[int, int, int]:
    """(pixels before, pixels after, total stride) that a position of ``deepest`` depends on.

    A 3×3 conv with padding 1 reaches one step each way at its layer's stride; a 2×2/2 pool
    reaches one step forward (its window is [2i, 2i+1]) and doubles the stride. For VGG19's
    relu5_1: before = 2·1 + 2·2 + 4·4 + 4·8 + 1·16 = 70, after = 70 + 1 + 2 + 4 + 8 = 85, a
    receptive field of 70 + 85 + 1 = 156 px at stride 16.
    """
    before = after = 0
    stride = 1
    for name, kind, _, _ in LAYERS[: LAYER_INDEX[deepest] + 1]:
        if kind == "conv":
            before += stride
            after += stride
        elif kind == "pool":
            after += stride
            stride *= 2
    return before, after, stride


def halo_for(spec: LossSpec) -> tuple[int, int]:
    """(halo, stride): the reach rounded up to whole strides, so tiles stay on the pooling grid."""
    before, after, stride = receptive_reach(spec.deepest)
    return stride * math.ceil(max(before, after) / stride), stride


@dataclass(frozen=True)
class Tile:
    """A tile's extent (inner region plus halo, clipped to the image) and its inner region."""

    y0: int
    y1: int
    x0: int
    x1: int
    iy0: int
    iy1: int
    ix0: int
    ix1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def inner_mask(self) -> np.ndarray:
        """[1,1,h,w]: 1 on the inner region, 0 on the halo (in tile coordinates)."""
        m = np.zeros((1, 1, *self.shape), np.float32)
        m[..., self.iy0 - self.y0 : self.iy1 - self.y0, self.ix0 - self.x0 : self.ix1 - self.x0] = 1.0
        return m


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    inner: int  # inner tile side in px (a multiple of the stride)
    halo: int
    stride: int
    tiles: tuple[Tile, ...] = field(default_factory=tuple)

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.height / self.inner), math.ceil(self.width / self.inner)

    @property
    def largest(self) -> tuple[int, int]:
        return max(t.shape[0] for t in self.tiles), max(t.shape[1] for t in self.tiles)

    @property
    def overhead(self) -> float:
        """Pixels evaluated per image pixel, per pass (the halo's cost)."""
        return sum(t.shape[0] * t.shape[1] for t in self.tiles) / (self.height * self.width)


def plan_tiles(height: int, width: int, spec: LossSpec, inner: int) -> TilePlan:
    """Tiles of ``inner`` px (rounded down to the stride, at least one stride) with halos."""
    halo, stride = halo_for(spec)
    inner = max(stride, inner // stride * stride)
    tiles = []
    for iy0 in range(0, height, inner):
        for ix0 in range(0, width, inner):
            iy1, ix1 = min(height, iy0 + inner), min(width, ix0 + inner)
            tiles.append(Tile(max(0, iy0 - halo), min(height, iy1 + halo), max(0, ix0 - halo), min(width, ix1 + halo), iy0, iy1, ix0, ix1))
    return TilePlan(height, width, inner, halo, stride, tuple(tiles))


def _crop(a: np.ndarray, t: Tile) -> np.ndarray:
    return np.ascontiguousarray(a[..., t.y0 : t.y1, t.x0 : t.x1])


def _layer_box(t: Tile, stride: int) -> tuple[slice, slice, slice, slice]:
    """The inner region at a layer of this stride: (rows, cols) in the tile's map and in the image's."""
    ty0, tx0 = (t.iy0 - t.y0) // stride, (t.ix0 - t.x0) // stride
    gy0, gx0 = t.iy0 // stride, t.ix0 // stride
    # Interior tiles end on the grid; the last one ends where floor-mode pooling ends the map.
    h, w = t.iy1 // stride - gy0, t.ix1 // stride - gx0
    return slice(ty0, ty0 + h), slice(tx0, tx0 + w), slice(gy0, gy0 + h), slice(gx0, gx0 + w)


@dataclass
class Stats:
    """Sums over positions, accumulated tile by tile."""

    gramsum: dict[str, np.ndarray] = field(default_factory=dict)  # [R,C,C] float64
    mass: dict[str, np.ndarray] = field(default_factory=dict)  # [R] float64
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # whole content maps (targets)
    sq: dict[str, float] = field(default_factory=dict)  # Σ (F−P)² per content layer (the loss)


TileProgress = Callable[[str, int, int], None]
Features = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def accumulate(
    spec: LossSpec, plan: TilePlan, features: Features, image: np.ndarray, guide: np.ndarray | None,
    content: dict[str, np.ndarray] | None = None, progress: TileProgress | None = None, label: str = "grams",
    maps: bool = True,
) -> Stats:
    """Pass 1 over every tile: Gram sums and masses, and per content layer either the whole
    map (``content`` None: targets; not kept when ``maps`` is False, for a style image) or
    Σ(F−P)² against the given maps (the loss)."""
    st = Stats()
    content_layers = spec.content_layers if content is not None or maps else ()
    for i, t in enumerate(plan.tiles, start=1):
        out = features(_crop(image, t), _tile_guide(guide, t))
        for n in spec.style_layers:
            st.gramsum[n] = st.gramsum.get(n, 0) + out[f"gramsum_{n}"].astype(np.float64)
            st.mass[n] = st.mass.get(n, 0) + out[f"mass_{n}"].astype(np.float64)
        for n in content_layers:
            ty, tx, gy, gx = _layer_box(t, layer_stride(n))
            f = out[f"content_{n}"][:, :, ty, tx]
            if content is None:
                if n not in st.maps:
                    s = layer_stride(n)
                    st.maps[n] = np.zeros((1, f.shape[1], plan.height // s, plan.width // s), np.float32)
                st.maps[n][:, :, gy, gx] = f
            else:
                st.sq[n] = st.sq.get(n, 0.0) + float(((f.astype(np.float64) - content[f"content_{n}"][:, :, gy, gx]) ** 2).sum())
        if progress is not None:
            progress(label, i, len(plan.tiles))
    return st


def _tile_guide(guide: np.ndarray | None, t: Tile) -> np.ndarray:
    inner = t.inner_mask()
    return inner if guide is None else _crop(guide, t) * inner


def _inv(spec: LossSpec, mass: np.ndarray, layer: str) -> np.ndarray:
    """The Gram's normalization as in the graphs: 1/(Σm² + ε) for "hw", also /C for "chw", 1 for "none"."""
    if spec.gram_norm == "none":
        return np.ones_like(mass)
    inv = 1.0 / (mass + EPS)
    return inv / LAYER_CHANNELS[layer] if spec.gram_norm == "chw" else inv


def normalized(spec: LossSpec, gramsum: np.ndarray, mass: np.ndarray, layer: str) -> np.ndarray:
    """G = S·inv."""
    return gramsum if spec.gram_norm == "none" else gramsum * _inv(spec, mass, layer)[:, None, None]


def tiled_features(
    spec: LossSpec, plan: TilePlan, features: Features, image: np.ndarray, guide: np.ndarray | None = None,
    progress: TileProgress | None = None, maps: bool = True,
) -> dict[str, np.ndarray]:
    """What the features graph gives for the whole image, assembled from tiles (without the
    content maps if ``maps`` is False: a style's relu4_2 map is 335 MB at 4096 px)."""
    st = accumulate(spec, plan, features, image, guide, None, progress, "targets", maps)
    out = {f"content_{n}": v for n, v in st.maps.items()}
    for n in spec.style_layers:
        out[f"gram_{n}"] = normalized(spec, st.gramsum[n], st.mass[n], n).astype(np.float32)
    return out


# ---- the loss from the sums, and the terms computed on the whole image -------------------------
def style_loss(spec: LossSpec, n: str, gramsum: np.ndarray, mass: np.ndarray, target: np.ndarray, weights: dict[str, float], hw: tuple[int, int]) -> tuple[float, np.ndarray]:
    """(the layer's weighted style term, ∂term/∂S [R,C,C]) from the global sums."""
    c = LAYER_CHANNELS[n]
    a = target.astype(np.float64).reshape(-1, c, c)
    e = normalized(spec, gramsum, mass, n) - a
    scale = weights["style_weight"] * weights[f"style_weight_{n}"]
    if spec.style_reduction == "mean":
        scale = scale / (c * c)
    elif spec.style_reduction == "keras":
        scale = scale / (36.0 * float(hw[0] * hw[1]) ** 2)
    scales = np.full(a.shape[0], scale)
    if spec.relative:
        scales = scales / ((a**2).mean(axis=(1, 2)) + EPS)
    loss = float((scales * (e**2).sum(axis=(1, 2))).sum())
    return loss, (2.0 * (scales * _inv(spec, mass, n))[:, None, None] * e).astype(np.float32)


def content_scale(spec: LossSpec, n: str, target: np.ndarray, weights: dict[str, float]) -> float:
    """The factor of Σ(F−P)² in the content term (the graphs' ``scale``)."""
    scale = weights["content_weight"] * weights[f"content_weight_{n}"]
    if spec.content_reduction == "mean":
        scale = scale / target.size
    if spec.relative:
        scale = scale / (_mean_square(target) + EPS)
    return scale


def _mean_square(a: np.ndarray, chunk: int = 1 << 22) -> float:
    """mean(a²) accumulated in float64 a chunk at a time: a float64 copy of relu4_2's map and
    its square took 1.5 GB at 4096 px."""
    flat = a.reshape(-1)
    total = 0.0
    for i in range(0, flat.size, chunk):
        c = flat[i : i + chunk].astype(np.float64)
        total += float(np.dot(c, c))
    return total / max(1, flat.size)


# Rows per band of the whole-image terms below: their float64 temporaries stay a few MB at
# any width, where whole-image float64 copies took ~5 image-sizes (720 MiB at 4096 px) even
# with the term's weight at zero, beyond what the plan's memory estimate counts.
BAND_ROWS = 128


def _bands(height: int, rows: int) -> range:
    return range(0, height, max(1, rows))


def tv_loss_grad(spec: LossSpec, x: np.ndarray, weight: float, out: np.ndarray | None = None, rows: int = BAND_ROWS) -> tuple[float, np.ndarray]:
    """Total variation as the graphs compute it, on the whole image; its gradient is added to
    ``out`` (float32, a new zero array if None). Computed in bands of ``rows`` rows, each in
    float64 with one row of the next band for the differences across the band's edge."""
    g = np.zeros(x.shape, np.float32) if out is None else out
    if weight == 0.0:
        return 0.0, g
    k, h, w = spec.tv_scale, x.shape[2], x.shape[3]
    lead = x.shape[0] * x.shape[1]
    loss = 0.0
    for r0 in _bands(h, rows):
        r1 = min(h, r0 + rows)
        xb = x[:, :, r0 : min(h, r1 + 1)].astype(np.float64)  # one row past the band, if any
        nd = xb.shape[2] - 1  # row differences starting in this band
        gb = np.zeros_like(xb)
        if spec.tv == "keras":
            base = xb[:, :, :nd, :-1]
            d1, d2 = xb[:, :, 1 : nd + 1, :-1] - base, xb[:, :, :nd, 1:] - base
            sq = (d1**2 + d2**2) * k * k
            gs = sq**0.25 * weight * 2.5 * k * k
            gb[:, :, 1 : nd + 1, :-1] += gs * d1
            gb[:, :, :nd, 1:] += gs * d2
            gb[:, :, :nd, :-1] -= gs * (d1 + d2)
            loss += float(weight * (sq**1.25).sum())
        else:
            dx, dy = np.diff(xb, axis=2), np.diff(xb[:, :, : r1 - r0], axis=3)
            if spec.tv == "sum_abs":
                c = weight * k
                loss += c * (np.abs(dx).sum() + np.abs(dy).sum())
                gx, gy = np.sign(dx) * c, np.sign(dy) * c
            else:  # means over the whole image's differences
                sx, sy = weight * k * k / (lead * (h - 1) * w), weight * k * k / (lead * h * (w - 1))
                loss += (dx**2).sum() * sx + (dy**2).sum() * sy
                gx, gy = 2 * sx * dx, 2 * sy * dy
            gb[:, :, 1:, :] += gx
            gb[:, :, :-1, :] -= gx
            gb[:, :, : r1 - r0, 1:] += gy
            gb[:, :, : r1 - r0, :-1] -= gy
        g[:, :, r0 : r0 + gb.shape[2]] += gb.astype(np.float32)
    return float(loss), g


def temporal_loss_grad(
    x: np.ndarray, target: np.ndarray, weight_map: np.ndarray, weight: float, out: np.ndarray | None = None, rows: int = BAND_ROWS
) -> tuple[float, np.ndarray]:
    """Ruder et al.: weight · Σ c·(x−ω)² / (3·H·W); its gradient is added to ``out``, in bands."""
    g = np.zeros(x.shape, np.float32) if out is None else out
    scale = weight / x.size
    loss = 0.0
    for r0 in _bands(x.shape[2], rows):
        band = np.s_[:, :, r0 : r0 + rows]
        d = x[band].astype(np.float64) - target[band]
        cd = weight_map[band] * d
        loss += float((cd * d).sum())
        g[band] += (2.0 * scale * cd).astype(np.float32)
    return loss * scale, g


@dataclass
class TiledObjective:
    """loss and ∂loss/∂image of the whole image, two passes over the tiles."""

    spec: LossSpec
    plan: TilePlan
    features: Features
    tile_grad: Callable[[dict[str, np.ndarray]], np.ndarray]
    targets: dict[str, np.ndarray]  # content_<l>: whole maps; gram_<l>: [R,C,C]
    weights: dict[str, float]  # every weight input, defaults filled in
    guide: np.ndarray | None = None  # [R,1,H,W] masks; None: one region, all ones
    temporal: tuple[np.ndarray, np.ndarray] | None = None  # ([1,3,H,W] target, [1,1,H,W] map)
    progress: TileProgress | None = None
    # The content terms' factors, fixed for the stage: computed once, not per evaluation.
    content_scales: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.content_scales = {n: content_scale(self.spec, n, self.targets[f"content_{n}"], self.weights) for n in self.spec.content_layers}

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray, dict[str, float]]:
        spec, hw = self.spec, (self.plan.height, self.plan.width)
        st = accumulate(spec, self.plan, self.features, x, self.guide, self.targets, self.progress, "grams")
        terms: dict[str, float] = {}
        feeds: dict[str, np.ndarray] = {}
        for n in spec.content_layers:
            scale = self.content_scales[n]
            terms[f"loss_content_{n}"] = scale * st.sq[n]
            feeds[f"content_scale_{n}"] = np.array(2.0 * scale, np.float32)
        for n in spec.style_layers:
            terms[f"loss_style_{n}"], feeds[f"gramgrad_{n}"] = style_loss(
                spec, n, st.gramsum[n], st.mass[n], self.targets[f"gram_{n}"], self.weights, hw
            )
        grad = np.zeros_like(x, dtype=np.float32)
        for i, t in enumerate(self.plan.tiles, start=1):
            tile_feeds = {**feeds, "image": _crop(x, t), "guide": _tile_guide(self.guide, t), "inner": t.inner_mask()}
            for n in spec.content_layers:
                s = layer_stride(n)
                tile_feeds[f"content_{n}"] = np.ascontiguousarray(
                    self.targets[f"content_{n}"][:, :, t.y0 // s : t.y0 // s + t.shape[0] // s, t.x0 // s : t.x0 // s + t.shape[1] // s]
                )
            grad[..., t.y0 : t.y1, t.x0 : t.x1] += self.tile_grad(tile_feeds)
            if self.progress is not None:
                self.progress("gradient", i, len(self.plan.tiles))
        terms["loss_tv"], _ = tv_loss_grad(spec, x, self.weights["tv_weight"], out=grad)
        if self.temporal is not None and "temporal_weight" in self.weights:
            terms["loss_temporal"], _ = temporal_loss_grad(x, *self.temporal, self.weights["temporal_weight"], out=grad)
        return float(sum(terms.values())), grad, terms
