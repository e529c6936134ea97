"""Shared test helpers (imported by test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from onnxstyle.reference.weights import TORCHVISION_CONV_INDEX
from onnxstyle.layers import LAYERS

DATA = Path(__file__).parent / "data"


# Prepended to a subprocess's code: importing torch fails there, as on an edge install.
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def run_cli_without_torch(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The CLI in a process where torch cannot be imported; fails if anything imported it."""
    code = BLOCK_TORCH + f"""
sys.argv = ["onnxstyle", *{args!r}]
from onnxstyle.cli import main
try:
    main()
finally:
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


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
