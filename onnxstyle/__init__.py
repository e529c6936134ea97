"""onnxstyle: Gatys neural style transfer from exported ONNX graphs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy so that `import onnxstyle` stays cheap and torch-free; the API lives in runtime.
    if name in ("stylize", "Stylizer", "Settings"):
        from .runtime import api

        return getattr(api, name)
    raise AttributeError(name)
