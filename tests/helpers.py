"""Shared test helpers (imported by test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from onnxstyle.models.weights import TORCHVISION_CONV_INDEX
from onnxstyle.spec import LAYERS

DATA = Path(__file__).parent / "data"


def cli_env(cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["COLUMNS"] = "200"
    if cache is not None:
        env["ONNXSTYLE_CACHE"] = str(cache)
    return env


def random_torchvision_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised state dict in the exact format of torchvision's vgg19-dcbb9e9d.pth."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    convs = [(cin, cout) for _, kind, cin, cout in LAYERS if kind == "conv"]
    for idx, (cin, cout) in zip(TORCHVISION_CONV_INDEX, convs):
        std = (2.0 / (9 * cin)) ** 0.5  # He init keeps activations O(1) through 16 layers
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * std
        state[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    state["classifier.0.weight"] = torch.zeros(8, 8)  # the real file has a classifier; it is ignored
    return state
