"""What an export computes, as plain data (no torch, no onnx).

The export side builds graphs from a :class:`LossSpec`; the runtime reads the same
spec back from the manifest. Keeping it torch-free lets ``stylize`` compute the
export-cache key and check a models folder without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .layers import LAYER_INDEX, layer_stride

Pooling = Literal["max", "avg"]
GramNorm = Literal["hw", "chw", "none"]
Reduction = Literal["mean", "sum", "keras"]
TVKind = Literal["mean_sq", "sum_abs", "keras"]


@dataclass(frozen=True)
class LossSpec:
    """The loss an export computes. Defaults are the ``gatys`` preset."""

    # Gatys et al. 2016: content at relu4_2, style at the first ReLU of every block.
    content_layers: tuple[str, ...] = ("relu4_2",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    # Gatys used max pooling in the released code; avg is offered as in the paper's figures.
    pooling: Pooling = "max"
    # Gram = F Fᵀ / (H·W): an average over positions, so its size does not depend on
    # the image size and one style weight serves 256 px and 1024 px alike.
    gram_norm: GramNorm = "hw"
    # How a layer's squared errors are reduced: mean (over elements), sum, or keras
    # (Chollet's example: Σ(G-A)² / (4·3²·(H·W)²) with H, W the *image's* size).
    content_reduction: Reduction = "mean"
    style_reduction: Reduction = "mean"
    # Total variation on the [0,1] image: mean_sq = mean of squared neighbour differences
    # (vertical + horizontal); sum_abs = tf.image.total_variation; keras = Σ((a+b)^1.25)
    # over the image cropped by one row and column, a, b the squared differences.
    tv: TVKind = "mean_sq"
    # The pixel scale the TV sees: 255 where the notebook took it on the 0-255 image.
    tv_scale: float = 1.0
    # Guided Grams (Gatys et al. 2017): loss_grad takes a guide [R,1,H,W] of region masks and
    # one Gram target per region ([R,C,C]). On by default since format 3: with an all-ones
    # guide it is exactly the plain loss, so one export serves every command, masks included
    # (the cost is measured in benchmarks/results/guided.md). False only describes old folders.
    guided: bool = True
    # Temporal consistency (Ruder et al. 2016, video): loss_grad takes a target image (the
    # previous stylized frame warped by optical flow) and a per-pixel weight map (0 where the
    # flow is unreliable); the term is temporal_weight · Σ c·(x-ω)² / (3·H·W). With an
    # all-zero map it vanishes, so one export serves stills and video alike.
    temporal: bool = True
    # Divide each layer's squared error by the mean square of its target. The terms
    # become relative errors, independent of the weights' activation scale (Caffe's
    # 0-255 inputs give activations ~50x those of torchvision's normalized inputs)
    # and of the layer's depth, so default weights carry across weight sources.
    relative: bool = True
    # Default weights (graph inputs with these values as overridable defaults). With
    # relative errors, style 20 : content 1 keeps the buildings of the Tübingen photo
    # legible under The Starry Night's strokes (1e2 dissolves them, 1e3 leaves only
    # the painting); see docs/ for the comparison.
    content_weight: float = 1.0
    style_weight: float = 20.0
    tv_weight: float = 0.0
    # Chosen by measurement (benchmarks/results/video.md, 0 to 1e4 on a pan of known motion
    # and a real clip): at 100 the warping error is 0.06-0.09x that of independent frames with
    # the Gram distance within 2%; at 1000 and more the style fades and, on real footage, the
    # warping error rises again.
    temporal_weight: float = 1e2
    # Per-layer weights multiply each layer's term; unlisted layers default to 1/n
    # for style (an average over layers) and 1 for content.
    content_layer_weights: tuple[float, ...] = ()
    style_layer_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in (*self.content_layers, *self.style_layers):
            if name not in LAYER_INDEX:
                raise ValueError(f"unknown VGG19 layer {name!r}; expected one of conv1_1 … pool5")
        if not self.content_layers and not self.style_layers:
            raise ValueError("at least one content or style layer is needed")
        if any(len(set(layers)) != len(layers) for layers in (self.content_layers, self.style_layers)):
            raise ValueError("a layer is listed twice")
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', not {self.pooling!r}")
        if self.gram_norm not in ("hw", "chw", "none"):
            raise ValueError(f"gram_norm must be hw, chw or none, not {self.gram_norm!r}")
        if self.content_reduction not in ("mean", "sum") or self.style_reduction not in ("mean", "sum", "keras"):
            raise ValueError("reductions: content mean|sum, style mean|sum|keras")
        if self.tv not in ("mean_sq", "sum_abs", "keras"):
            raise ValueError(f"tv must be mean_sq, sum_abs or keras, not {self.tv!r}")
        if self.content_layer_weights and len(self.content_layer_weights) != len(self.content_layers):
            raise ValueError("content_layer_weights must match content_layers")
        if self.style_layer_weights and len(self.style_layer_weights) != len(self.style_layers):
            raise ValueError("style_layer_weights must match style_layers")

    @property
    def deepest(self) -> str:
        return max((*self.content_layers, *self.style_layers), key=LAYER_INDEX.__getitem__)

    @property
    def min_side(self) -> int:
        """The least side in px an image needs for these graphs: each 2x2 pool up to the deepest
        layer halves it (floor), and the guide's pools likewise, so a side under the deepest
        layer's stride pools to nothing (16 px for relu5_1; OpenVINO and onnxruntime both fail
        at 15 and run at 16 and 17, tests/test_min_size.py)."""
        return layer_stride(self.deepest)

    def weight_defaults(self) -> dict[str, float]:
        """Every weight input of loss_grad (named as in the graph) with its default value."""
        c = self.content_layer_weights or (1.0,) * len(self.content_layers)
        s = self.style_layer_weights or (1.0 / max(len(self.style_layers), 1),) * len(self.style_layers)
        w = {"content_weight": self.content_weight, "style_weight": self.style_weight, "tv_weight": self.tv_weight}
        if self.temporal:
            w["temporal_weight"] = self.temporal_weight
        w.update({f"content_weight_{n}": float(v) for n, v in zip(self.content_layers, c)})
        w.update({f"style_weight_{n}": float(v) for n, v in zip(self.style_layers, s)})
        return w

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LossSpec":
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        for k in ("content_layers", "style_layers", "content_layer_weights", "style_layer_weights"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def replace(self, **changes: Any) -> "LossSpec":
        return dataclasses.replace(self, **changes)


_TORCH_TUTORIAL = LossSpec(
    content_layers=("conv2_2",),
    style_layers=("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"),
    gram_norm="chw",
    relative=False,
    style_weight=1e6,
    style_layer_weights=(1.0, 1.0, 1.0, 1.0, 1.0),
)

PRESETS: dict[str, LossSpec] = {
    "gatys": LossSpec(),
    # The PyTorch neural-style tutorial: conv outputs *before* ReLU (its "conv_4" is conv2_2),
    # Gram / (C·H·W), mean squared errors summed over layers, content 1, style 1e6.
    "torch-tutorial": _TORCH_TUTORIAL,
    # Our users' PyTorch notebook: the tutorial with the content moved to conv3_1 ("conv_5").
    "torch-notebook": _TORCH_TUTORIAL.replace(content_layers=("conv3_1",)),
    # TensorFlow's tutorial: post-ReLU, content block5_conv2, Gram / (H·W),
    # 1e4·mean content error + (1e-2/5)·Σ mean style errors + 30·Σ|neighbour differences|.
    "tf-tutorial": LossSpec(
        content_layers=("relu5_2",),
        relative=False,
        content_weight=1e4,
        style_weight=1e-2,
        tv="sum_abs",
        tv_weight=30.0,
    ),
    # Chollet's Keras example: 0.025·Σ(F-P)² + (1/5)·Σ_l Σ(G-A)²/(4·3²·(H·W)²) with the
    # unnormalized Gram, + 1e-4·Σ((a+b)^1.25) on the 0-255 image.
    "keras-example": LossSpec(
        content_layers=("relu5_2",),
        gram_norm="none",
        relative=False,
        content_reduction="sum",
        style_reduction="keras",
        content_weight=0.025,
        style_weight=1.0,
        tv="keras",
        tv_scale=255.0,
        tv_weight=1e-4,
    ),
}
# The export issue named the PyTorch tutorial preset "tutorial"; both names work.
PRESET_ALIASES: dict[str, str] = {"tutorial": "torch-tutorial"}


def preset_spec(name: str) -> LossSpec:
    name = canonical_preset(name)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def canonical_preset(name: str) -> str:
    return PRESET_ALIASES.get(name, name)
