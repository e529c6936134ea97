"""The two ONNX graphs, built node by node: features, and loss with its exact gradient.

The gradient graph is the adjoint of the forward network written out with forward
ops only (Conv, Where, SpaceToDepth/DepthToSpace, MatMul, Pad), so it runs on every
stock onnxruntime provider: no training ops, no weight gradients, nothing past the
deepest layer in use. Its correctness is proven against torch autograd after every
export (``validate.py``) and by finite differences in the tests.

All spatial sizes are symbolic: one export serves every image size from 32 px up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..spec import LossSpec
from ..layers import LAYER_CHANNELS, LAYER_INDEX, LAYERS, layer_stride

OPSET = 17
IMAGE = "image"
GUIDE = "guide"
TEMPORAL_TARGET = "temporal_target"
TEMPORAL_MAP = "temporal_map"
INNER = "inner"
EPS = 1e-8


def _dims(name: str) -> tuple[str, str]:
    s = layer_stride(name)
    return (f"H/{s}", f"W/{s}") if s > 1 else ("H", "W")


@dataclass
class _Builder:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0
    consts: dict[tuple[Any, ...], str] = field(default_factory=dict)

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}__{self.count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        return self.named(op_type, inputs, self.fresh(hint or op_type.lower()), **attrs)

    def named(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            self.consts[key] = self.init(self.fresh("const"), arr)
        return self.consts[key]

    def scalar_f(self, int_tensor: str) -> str:
        return self.op("Cast", [int_tensor], to=TensorProto.FLOAT)

    def dim(self, x: str, axis: int) -> str:
        """Dimension ``axis`` of x as an int64 scalar-like [1] tensor."""
        shape = self.op("Shape", [x])
        return self.op("Gather", [shape, self.const([axis], np.int64)], axis=0)

    def sumsq(self, d: str) -> str:
        """Σ d² as a scalar."""
        return self.op("ReduceSum", [self.op("Mul", [d, d])], keepdims=0)

    def twice(self, x: str, scale: str) -> str:
        """x · 2·scale: the derivative of scale·Σx²."""
        return self.op("Mul", [x, self.op("Mul", [scale, self.const(2.0)])])

    def relative(self, scale: str, target: str, **reduce: Any) -> str:
        """scale / (mean(target²) + ε): the relative error's factor."""
        energy = self.op("ReduceMean", [self.op("Mul", [target, target])], **reduce)
        return self.op("Div", [scale, self.op("Add", [energy, self.const(EPS)])])


@dataclass
class Weights:
    """Arrays the graphs are built from (no torch needed here)."""

    convs: dict[str, tuple[np.ndarray, np.ndarray]]
    prep_m: np.ndarray
    prep_b: np.ndarray


def _forward(b: _Builder, spec: LossSpec, weights: Weights, image: str, masks: dict[str, Any] | None = None) -> dict[str, str]:
    """Preprocessing and VGG19 up to the deepest tap; returns layer name → tensor ('prep' too).

    ``masks``: filled with what the backward needs from each ReLU and max-pool, computed right
    here in the forward pass as booleans, so the float activations die after their last
    forward use (0.2-0.3 GB less at 1024 px; benchmarks/results/memory.md).
    """
    t = b.op("Conv", [image, b.init("prep_w", weights.prep_m[:, :, None, None]), b.init("prep_b", weights.prep_b)], "prep")
    out = {"prep": t}
    for name, kind, _, _ in LAYERS[: LAYER_INDEX[spec.deepest] + 1]:
        x = t
        if kind == "conv":
            w, bias = weights.convs[name]
            t = b.op("Conv", [t, b.init(f"{name}_w", w), b.init(f"{name}_b", bias)], name, pads=[1, 1, 1, 1])
        elif kind == "relu":
            t = b.op("Relu", [t], name)
            if masks is not None:
                masks[name] = b.op("Greater", [t, b.const(0.0)], f"{name}_mask")
        elif spec.pooling == "max":
            t = b.op("MaxPool", [t], name, kernel_shape=[2, 2], strides=[2, 2])
            if masks is not None:
                masks[name] = _maxpool_masks(b, x, t, LAYER_CHANNELS[name])
        else:
            t = b.op("AveragePool", [t], name, kernel_shape=[2, 2], strides=[2, 2])
        out[name] = t
    return out


def _gram(b: _Builder, spec: LossSpec, f: str, name: str) -> tuple[str, str, str]:
    """(gram, reshaped features [C, HW], 1/denominator) for feature map f of layer ``name``."""
    c = LAYER_CHANNELS[name]
    m = b.op("Reshape", [f, b.const([c, -1], np.int64)], f"{name}_flat")
    if spec.gram_norm == "none":
        inv = b.const([1.0])
    else:
        hw = b.op("Mul", [b.dim(f, 2), b.dim(f, 3)])
        denom = b.scalar_f(hw)
        if spec.gram_norm == "chw":
            denom = b.op("Mul", [denom, b.const(float(c))])
        inv = b.op("Reciprocal", [denom])
    g = b.op("Mul", [b.op("MatMul", [m, b.op("Transpose", [m], perm=[1, 0])]), inv], f"{name}_gram")
    return g, m, inv


def _value_info(name: str, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


RGB = [1, 3, "H", "W"]
MASKS = ["R", 1, "H", "W"]


def _content_infos(spec: LossSpec) -> list[onnx.ValueInfoProto]:
    return [_value_info(f"content_{n}", [1, LAYER_CHANNELS[n], *_dims(n)]) for n in spec.content_layers]


def _gram_infos(spec: LossSpec, prefix: str = "gram", regions: bool = True) -> list[onnx.ValueInfoProto]:
    """[R,C,C] per style layer ([C,C] without ``regions``)."""
    return [_value_info(f"{prefix}_{n}", ["R"] * regions + [LAYER_CHANNELS[n]] * 2) for n in spec.style_layers]


def build_features(spec: LossSpec, weights: Weights) -> onnx.ModelProto:
    """image [1,3,H,W] RGB [0,1] (+ guide [R,1,H,W]) → content feature maps and style Grams.

    The guided form (format 3) also gives each style layer's raw sum
    ``gramsum`` = Σ_p (f_p m_p)(f_p m_p)ᵀ and ``mass`` = Σ_p m_p²: sums over positions add
    up across tiles, so tiled runs assemble exact Grams from them.
    """
    b = _Builder()
    taps = _forward(b, spec, weights, IMAGE)
    for n in spec.content_layers:
        b.named("Identity", [taps[n]], f"content_{n}")
    outputs = _content_infos(spec)
    inputs = [_value_info(IMAGE, RGB)]
    if spec.guided:
        inputs.append(_value_info(GUIDE, MASKS))
        guides = _guides(b, spec)
        for n in spec.style_layers:
            c = LAYER_CHANNELS[n]
            gg = _guided_gram(b, spec, taps[n], n, guides[n])
            b.named("Identity", [gg.gram], f"gram_{n}")
            b.named("Identity", [gg.raw], f"gramsum_{n}")
            b.named("Reshape", [gg.mass, b.const([-1], np.int64)], f"mass_{n}")
            outputs += [_value_info(f"gram_{n}", ["R", c, c]), _value_info(f"gramsum_{n}", ["R", c, c]), _value_info(f"mass_{n}", ["R"])]
    else:
        for n in spec.style_layers:
            g, _, _ = _gram(b, spec, taps[n], n)
            b.named("Identity", [g], f"gram_{n}")
        outputs += _gram_infos(spec, regions=False)
    return _model(b, "onnxstyle_features", inputs, outputs)


def _maxpool_masks(b: _Builder, x: str, y: str, c: int) -> tuple[list[str], str]:
    """Which input of each 2×2 window is its first maximum (torch's tie rule), as four boolean
    maps at the pooled size, and the pads that restore an odd last row/column."""
    h2 = b.op("Mul", [b.dim(y, 2), b.const([2], np.int64)])
    w2 = b.op("Mul", [b.dim(y, 3), b.const([2], np.int64)])
    ends = b.op("Concat", [h2, w2], axis=0)
    # Floor-mode pooling ignores an odd last row/column; crop it, pad its zero gradient back.
    xe = b.op("Slice", [x, b.const([0, 0], np.int64), ends, b.const([2, 3], np.int64)])
    s = b.op("SpaceToDepth", [xe], blocksize=2)  # channel (dy*2+dx)*C + c: window order
    taken = None
    masks = []
    for k in range(4):
        sk = b.op("Slice", [s, b.const([k * c], np.int64), b.const([(k + 1) * c], np.int64), b.const([1], np.int64)])
        eq = b.op("Equal", [sk, y])
        masks.append(eq if taken is None else b.op("And", [eq, b.op("Not", [taken])]))
        if k < 3:
            taken = eq if taken is None else b.op("Or", [taken, eq])
    diff = b.op("Sub", [b.op("Shape", [x]), b.op("Concat", [b.const([0, 0], np.int64), ends], axis=0)])
    # The batch and channel entries of diff are 0 - N and 0 - C: only the spatial part is used.
    spatial = b.op("Slice", [diff, b.const([2], np.int64), b.const([4], np.int64)])
    pads = b.op("Concat", [b.const([0, 0, 0, 0, 0, 0], np.int64), spatial], axis=0)
    return masks, pads


def _maxpool_backward(b: _Builder, masks: tuple[list[str], str], gy: str) -> str:
    """Route gy to the first maximum of each 2×2 window, from the forward pass's masks."""
    window, pads = masks
    zero = b.const(0.0)
    ge = b.op("DepthToSpace", [b.op("Concat", [b.op("Where", [m, gy, zero]) for m in window], axis=1)], blocksize=2, mode="DCR")
    return b.op("Pad", [ge, pads], mode="constant")


def _avgpool_backward(b: _Builder, x: str, gy: str) -> str:
    """gy/4 over each 2×2 window, padded back to x's shape where floor mode dropped a row/column."""
    up = b.op("Resize", [gy, "", b.const([1.0, 1.0, 2.0, 2.0])], mode="nearest")
    g = b.op("Mul", [up, b.const(0.25)])
    diff = b.op("Sub", [b.op("Shape", [x]), b.op("Shape", [g])])
    pads = b.op("Concat", [b.const([0, 0, 0, 0], np.int64), diff], axis=0)
    return b.op("Pad", [g, pads], mode="constant")


TapGrads = dict[str, list[Callable[[], str]]]


def _weight_inputs(b: _Builder, spec: LossSpec) -> list[onnx.ValueInfoProto]:
    """Every loss weight as an initializer that is also a graph input: fed when given,
    its default otherwise, so a weight changes without a re-export."""
    return [_value_info(b.init(k, np.array(v, np.float32)), []) for k, v in spec.weight_defaults().items()]


def _content_terms(b: _Builder, spec: LossSpec, taps: dict[str, str], terms: dict[str, str], tap_grads: TapGrads) -> None:
    for n in spec.content_layers:
        p = f"content_{n}"
        f = taps[n]
        d = b.op("Sub", [f, p], f"{n}_cdiff")
        scale = b.op("Mul", ["content_weight", f"content_weight_{n}"])
        if spec.content_reduction == "mean":
            scale = b.op("Div", [scale, b.scalar_f(b.op("Size", [f]))])
        if spec.relative:
            scale = b.relative(scale, p, keepdims=0)
        terms[f"loss_content_{n}"] = b.op("Mul", [b.sumsq(d), scale])
        tap_grads.setdefault(n, []).append(lambda d=d, scale=scale: b.twice(d, scale))


def _plain_style_terms(b: _Builder, spec: LossSpec, taps: dict[str, str], terms: dict[str, str], tap_grads: TapGrads) -> None:
    """The unguided form (what format 1 and 2 folders hold; tests build it to check them)."""
    for n in spec.style_layers:
        a = f"gram_{n}"
        f = taps[n]
        g, m, inv = _gram(b, spec, f, n)
        e = b.op("Sub", [g, a], f"{n}_sdiff")
        scale = _style_scale(b, spec, n)
        if spec.relative:
            scale = b.relative(scale, a, keepdims=0)
        terms[f"loss_style_{n}"] = b.op("Mul", [b.sumsq(e), scale])

        def grad(e: str = e, scale: str = scale, m: str = m, inv: str = inv, f: str = f, n: str = n) -> str:
            # dL/dG = 2·scale·E; G = M Mᵀ·inv  ⇒  dL/dM = (dG + dGᵀ) M · inv.
            dg = b.twice(e, scale)
            sym = b.op("Add", [dg, b.op("Transpose", [dg], perm=[1, 0])])
            dm = b.op("Mul", [b.op("MatMul", [sym, m]), inv])
            return b.op("Reshape", [dm, b.op("Shape", [f])], f"{n}_gflat")

        tap_grads.setdefault(n, []).append(grad)


def _backward(b: _Builder, spec: LossSpec, taps: dict[str, str], tap_grads: TapGrads, masks: dict[str, Any]) -> str:
    """∂loss/∂image through the network, deepest layer first. Each tap's gradient is built
    only when the chain reaches its layer, so the runtime computes (and holds) it late."""
    names = [name for name, *_ in LAYERS[: LAYER_INDEX[spec.deepest] + 1]]
    grad: str | None = None
    for i in range(len(names) - 1, -1, -1):
        name = names[i]
        for make in tap_grads.get(name, []):
            tg = make()
            grad = tg if grad is None else b.op("Add", [grad, tg])
        assert grad is not None, "the deepest layer is always tapped"
        below = taps[names[i - 1]] if i > 0 else taps["prep"]
        if name.startswith("conv"):
            # Input gradient of a stride-1, pad-1 conv = conv with the kernel flipped and
            # in/out swapped. The flipped kernel is computed in the graph from the forward's
            # own initializer (engines fold it once at load), so the file holds each weight
            # once; a plain Conv keeps the fastest kernels (ConvTranspose ran 1.4-2x slower
            # in OpenVINO bf16 at 256-512 channels).
            wt = _flipped(b, f"{name}_w", f"{name}_wT")
            grad = b.op("Conv", [grad, wt], f"{name}_bwd", pads=[1, 1, 1, 1])
        elif name.startswith("relu"):
            grad = b.op("Where", [masks[name], grad, b.const(0.0)], f"{name}_bwd")
        elif spec.pooling == "max":
            grad = _maxpool_backward(b, masks[name], grad)
        else:
            grad = _avgpool_backward(b, below, grad)
    assert grad is not None
    # Through the preprocessing (a per-pixel affine map M): grad_x = Mᵀ grad.
    return b.op("Conv", [grad, b.named("Transpose", ["prep_w"], "prep_wT", perm=[1, 0, 2, 3])], "prep_bwd")


def _flipped(b: _Builder, w: str, out: str) -> str:
    """The adjoint kernel of a 3×3 conv: in/out channels swapped, both spatial axes reversed."""
    lo = np.iinfo(np.int64).min
    rev = b.op("Slice", [w, b.const([-1, -1], np.int64), b.const([lo, lo], np.int64), b.const([2, 3], np.int64), b.const([-1, -1], np.int64)])
    return b.named("Transpose", [rev], out, perm=[1, 0, 2, 3])


def build_loss_grad(spec: LossSpec, weights: Weights) -> onnx.ModelProto:
    """(image, targets, weights) → loss, grad = ∂loss/∂image, and each weighted term."""
    b = _Builder()
    weight_inputs = _weight_inputs(b, spec)
    masks: dict[str, Any] = {}
    taps = _forward(b, spec, weights, IMAGE, masks)
    tap_grads: TapGrads = {}
    terms: dict[str, str] = {}
    _content_terms(b, spec, taps, terms, tap_grads)
    if spec.guided:
        guides = _guides(b, spec)
        for n in spec.style_layers:
            terms[f"loss_style_{n}"], make = _guided_style(b, spec, taps[n], n, guides[n])
            tap_grads.setdefault(n, []).append(make)
    else:
        _plain_style_terms(b, spec, taps, terms, tap_grads)
    grad_img = _backward(b, spec, taps, tap_grads, masks)

    terms["loss_tv"], tvg = _tv(b, spec)
    grad_img = b.op("Add", [grad_img, tvg])
    if spec.temporal:
        terms["loss_temporal"], tg = _temporal(b)
        grad_img = b.op("Add", [grad_img, tg])
    b.named("Identity", [grad_img], "grad")

    total = None
    for k, t in terms.items():
        b.named("Identity", [t], k)
        total = t if total is None else b.op("Add", [total, t])
    b.named("Identity", [total], "loss")

    inputs = [_value_info(IMAGE, RGB), *([_value_info(GUIDE, MASKS)] if spec.guided else [])]
    inputs += _content_infos(spec) + _gram_infos(spec, regions=spec.guided)
    if spec.temporal:
        inputs += [_value_info(TEMPORAL_TARGET, RGB), _value_info(TEMPORAL_MAP, [1, 1, "H", "W"])]
    outputs = [_value_info("loss", []), _value_info("grad", RGB), *(_value_info(k, []) for k in terms)]
    return _model(b, "onnxstyle_loss_grad", inputs + weight_inputs, outputs)


def build_tile_grad(spec: LossSpec, weights: Weights) -> onnx.ModelProto:
    """The second pass of an exact tiled evaluation: one tile's share of ∂loss/∂image.

    Inputs: the tile (image with its halo), ``guide`` = mask × inner region, ``inner`` (1 on
    the tile's own region, 0 on the halo), the content targets cropped to the tile,
    ``content_scale_<l>`` = 2·(the content term's factor), and ``gramgrad_<l>`` = ∂loss/∂S_l,
    the gradient with respect to the *global* raw Gram sum S_l = Σ_p (f_p m_p)(f_p m_p)ᵀ,
    computed by the runtime from the first pass. Tap gradients are non-zero on the inner
    region only, so the tiles' outputs summed over their extents are exactly the untiled
    gradient (the halo covers the receptive field; see runtime/tiling.py).
    """
    b = _Builder()
    masks: dict[str, Any] = {}
    taps = _forward(b, spec, weights, IMAGE, masks)
    guides = _guides(b, spec, GUIDE)
    inner = _guides(b, spec, INNER)
    tap_grads: TapGrads = {}
    for n in spec.content_layers:
        d = b.op("Mul", [b.op("Sub", [taps[n], f"content_{n}"]), inner[n]])
        tap_grads.setdefault(n, []).append(lambda d=d, n=n: b.op("Mul", [d, f"content_scale_{n}"]))
    for n in spec.style_layers:
        tap_grads.setdefault(n, []).append(lambda n=n: _gram_backward(b, taps[n], n, guides[n], f"gramgrad_{n}"))
    b.named("Identity", [_backward(b, spec, taps, tap_grads, masks)], "grad")
    inputs = [_value_info(IMAGE, RGB), _value_info(GUIDE, MASKS), _value_info(INNER, [1, 1, "H", "W"]), *_content_infos(spec)]
    inputs += [_value_info(f"content_scale_{n}", []) for n in spec.content_layers] + _gram_infos(spec, "gramgrad")
    return _model(b, "onnxstyle_tile_grad", inputs, [_value_info("grad", RGB)])


def _gram_backward(b: _Builder, f: str, name: str, guide: str, gram_grad: str) -> str:
    """∂loss/∂f for S_r = Σ_p (f_p m_rp)(f_p m_rp)ᵀ given D_r = ∂loss/∂S_r: Σ_r (D_r+D_rᵀ)(f∘m_r) ∘ m_r."""
    fl, mr = _flat(b, f, name, guide)
    sym = b.op("Add", [gram_grad, b.op("Transpose", [gram_grad], perm=[0, 2, 1])])
    dm = b.op("MatMul", [sym, b.op("Mul", [fl, mr])])  # [R, C, hw]
    dfl = b.op("ReduceSum", [b.op("Mul", [dm, mr]), b.const([0], np.int64)], keepdims=0)
    return b.op("Reshape", [dfl, b.op("Shape", [f])])


def _flat(b: _Builder, f: str, name: str, guide: str) -> tuple[str, str]:
    """(f as [C, hw], the guide as [R, 1, hw])."""
    fl = b.op("Reshape", [f, b.const([LAYER_CHANNELS[name], -1], np.int64)])
    return fl, b.op("Reshape", [guide, b.const([0, 1, -1], np.int64)])


def _style_scale(b: _Builder, spec: LossSpec, name: str) -> str:
    """Weight × reduction factor of a style layer's Σ(G-A)² (before the relative division)."""
    c = LAYER_CHANNELS[name]
    scale = b.op("Mul", ["style_weight", f"style_weight_{name}"])
    if spec.style_reduction == "mean":
        return b.op("Mul", [scale, b.const(1.0 / (c * c))])
    if spec.style_reduction == "keras":
        # Chollet: / (4 · channels² · size²) with channels = 3 and size = the image's H·W.
        hw_img = b.op("Mul", [b.dim(IMAGE, 2), b.dim(IMAGE, 3)])
        size = b.op("ReduceSum", [b.scalar_f(hw_img)], keepdims=0)
        return b.op("Div", [scale, b.op("Mul", [b.op("Mul", [size, size]), b.const(36.0)])])
    return scale


def _guides(b: _Builder, spec: LossSpec, source: str = "guide") -> dict[str, str]:
    """A mask input [R,1,H,W] at every layer's resolution: 2×2 average pooling at each pool,
    floor mode like the network, so masks and feature maps stay aligned."""
    out: dict[str, str] = {}
    g = source
    for name, kind, _, _ in LAYERS[: LAYER_INDEX[spec.deepest] + 1]:
        if kind == "pool":
            g = b.op("AveragePool", [g], f"{name}_guide", kernel_shape=[2, 2], strides=[2, 2])
        out[name] = g
    return out


@dataclass
class _GuidedGram:
    gram: str  # [R,C,C] G_r = raw_r · inv_r
    raw: str  # [R,C,C] Σ_p (f_p m_p)(f_p m_p)ᵀ
    mass: str  # [R,1,1] Σ_p m_p²
    inv: str  # [R,1,1] the normalization (1/mass for "hw", 1/(C·mass) for "chw", 1 for "none")
    m: str  # [R,C,hw] the masked features
    mr: str  # [R,1,hw] the guide at this layer, flattened


def _guided_gram(b: _Builder, spec: LossSpec, f: str, name: str, guide: str) -> _GuidedGram:
    """G_r = (F∘m_r)(F∘m_r)ᵀ / Σm_r² (the "hw" norm generalised: a weighted average over
    positions; ×1/C for "chw"; no division for "none"). An all-ones guide gives F Fᵀ/(H·W)."""
    c = LAYER_CHANNELS[name]
    fl, mr = _flat(b, f, name, guide)
    m = b.op("Mul", [fl, mr])  # [R, C, hw]
    mt = b.op("Transpose", [m], perm=[0, 2, 1])
    raw = b.op("MatMul", [m, mt], f"{name}_gramsum")
    mass = b.op("ReduceSum", [b.op("Mul", [mr, mr]), b.const([1, 2], np.int64)], keepdims=1)  # [R,1,1]
    if spec.gram_norm == "none":
        inv = b.const([1.0])
    else:
        inv = b.op("Reciprocal", [b.op("Add", [mass, b.const(EPS)])])
        if spec.gram_norm == "chw":
            inv = b.op("Mul", [inv, b.const(1.0 / c)])
    return _GuidedGram(b.op("Mul", [raw, inv], f"{name}_ggram"), raw, mass, inv, m, mr)


def _guided_style(b: _Builder, spec: LossSpec, f: str, name: str, guide: str) -> tuple[str, Callable[[], str]]:
    """Guided Gram loss (Gatys et al. 2017) over R regions, each against its own target A_r;
    returns (loss, a builder of dL/df for when the backward chain reaches this layer)."""
    gg = _guided_gram(b, spec, f, name, guide)
    a = f"gram_{name}"
    e = b.op("Sub", [gg.gram, a])
    scale = _style_scale(b, spec, name)
    axes12 = b.const([1, 2], np.int64)
    if spec.relative:
        scale = b.relative(scale, a, axes=[1, 2], keepdims=1)  # [R,1,1]
    sq = b.op("ReduceSum", [b.op("Mul", [e, e]), axes12], keepdims=1)
    loss = b.op("ReduceSum", [b.op("Mul", [sq, scale])], keepdims=0)

    def grad() -> str:
        # ∂loss/∂S_r = 2·scale_r·inv_r·(G_r − A_r), then the same chain as the tiled pass.
        dgram = b.op("Mul", [e, b.op("Mul", [b.op("Mul", [scale, gg.inv]), b.const(2.0)])])
        return _gram_backward(b, f, name, guide, dgram)

    return loss, grad


def _tv(b: _Builder, spec: LossSpec) -> tuple[str, str]:
    """(weighted TV loss, its gradient w.r.t. the image) for the spec's TV kind."""
    k = spec.tv_scale
    if spec.tv == "keras":
        # a, b over the image cropped by its last row and column, as in the Keras example.
        base = _slice(b, _slice(b, IMAGE, 2, 0, -1), 3, 0, -1)
        d1 = b.op("Sub", [_slice(b, _slice(b, IMAGE, 2, 1, None), 3, 0, -1), base])
        d2 = b.op("Sub", [_slice(b, _slice(b, IMAGE, 2, 0, -1), 3, 1, None), base])
        sq = b.op("Mul", [b.op("Add", [b.op("Mul", [d1, d1]), b.op("Mul", [d2, d2])]), b.const(k * k)])
        loss = b.op("Mul", [b.op("ReduceSum", [b.op("Pow", [sq, b.const(1.25)])], keepdims=0), "tv_weight"])
        # d/dd1 (k²(d1²+d2²))^1.25 = 2.5·k²·s^0.25·d1
        gs = b.op("Mul", [b.op("Pow", [sq, b.const(0.25)]), b.op("Mul", ["tv_weight", b.const(2.5 * k * k)])])
        g1, g2 = b.op("Mul", [gs, d1]), b.op("Mul", [gs, d2])
        grad = b.op("Sub", [_pad2(b, g1, (1, 0), (0, 1)), _pad2(b, b.op("Add", [g1, g2]), (0, 1), (0, 1))])
        return loss, b.op("Add", [grad, _pad2(b, g2, (0, 1), (1, 0))])
    dx = b.op("Sub", [_slice(b, IMAGE, 2, 1, None), _slice(b, IMAGE, 2, 0, -1)])
    dy = b.op("Sub", [_slice(b, IMAGE, 3, 1, None), _slice(b, IMAGE, 3, 0, -1)])
    if spec.tv == "sum_abs":
        w = b.op("Mul", ["tv_weight", b.const(k)])
        l1 = b.op("Add", [b.op("ReduceSum", [b.op("Abs", [dx])], keepdims=0), b.op("ReduceSum", [b.op("Abs", [dy])], keepdims=0)])
        loss = b.op("Mul", [l1, w])
        gx, gy = b.op("Mul", [b.op("Sign", [dx]), w]), b.op("Mul", [b.op("Sign", [dy]), w])
    else:  # mean_sq
        sx = b.op("Div", [b.op("Mul", ["tv_weight", b.const(k * k)]), b.scalar_f(b.op("Size", [dx]))])
        sy = b.op("Div", [b.op("Mul", ["tv_weight", b.const(k * k)]), b.scalar_f(b.op("Size", [dy]))])
        loss = b.op("Add", [b.op("Mul", [b.sumsq(dx), sx]), b.op("Mul", [b.sumsq(dy), sy])])
        gx, gy = b.twice(dx, sx), b.twice(dy, sy)
    # d/dx_i Σ f(x_{i+1}-x_i) = f'(x_i - x_{i-1}) - f'(x_{i+1} - x_i): the derivative shifted both ways.
    rows = b.op("Sub", [_pad2(b, gx, (1, 0), (0, 0)), _pad2(b, gx, (0, 1), (0, 0))])
    return loss, b.op("Add", [rows, b.op("Sub", [_pad2(b, gy, (0, 0), (1, 0)), _pad2(b, gy, (0, 0), (0, 1))])])


def _temporal(b: _Builder) -> tuple[str, str]:
    """Ruder et al. 2016: temporal_weight · Σ c·(x-ω)² / D with D = 3·H·W, c broadcast over
    the channels; its gradient is 2·temporal_weight·c·(x-ω)/D."""
    d = b.op("Sub", [IMAGE, TEMPORAL_TARGET])
    cd = b.op("Mul", [TEMPORAL_MAP, d])
    scale = b.op("Div", ["temporal_weight", b.scalar_f(b.op("Size", [IMAGE]))])
    loss = b.op("Mul", [b.op("ReduceSum", [b.op("Mul", [cd, d])], keepdims=0), scale])
    return loss, b.twice(cd, scale)


def _pad2(b: _Builder, x: str, rows: tuple[int, int], cols: tuple[int, int]) -> str:
    pads = [0, 0, rows[0], cols[0], 0, 0, rows[1], cols[1]]
    return b.op("Pad", [x, b.const(pads, np.int64)], mode="constant")


def _slice(b: _Builder, x: str, axis: int, start: int, end: int | None) -> str:
    e = np.iinfo(np.int64).max if end is None else end
    return b.op("Slice", [x, b.const([start], np.int64), b.const([e], np.int64), b.const([axis], np.int64)])


def _model(b: _Builder, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxstyle")
    # IR 8 is read by onnxruntime ≥ 1.14 and TensorRT 8.6+; newer IRs buy nothing here.
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
