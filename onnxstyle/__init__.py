"""onnxstyle: Gatys neural style transfer from exported ONNX graphs.

``onnxstyle.stylize(content, style, size=384)`` is the one-call API: it finds (or, with
torch installed, exports once) the graphs and runs them. For many images, keep a
:class:`~onnxstyle.runtime.stylizer.Stylizer` warm.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .version import __version__

__all__ = ["stylize", "Stylizer", "RunSettings", "EngineConfig", "__version__"]


def stylize(
    content: Any,
    styles: Any,
    models: Path | str | None = None,
    masks: Sequence[Any] | None = None,
    preset: str = "gatys",
    device: str = "auto",
    **settings: Any,
) -> Any:
    """Stylize ``content`` (RGB float32 HxWx3 in [0,1]) with one or more style images.

    Keyword arguments are :class:`RunSettings` fields (or the CLI's names: ``lr``), checked by
    the same builder as every command's; ``preset`` sets a notebook's loss and run settings first. ``masks``: one greyscale mask (white: stylize) or one per style.
    Returns the stylized RGB image, float32 in [0,1], with the longest side ``size``.
    """
    from .autoexport import resolve_models
    from .runtime.stylizer import stylize as run_stylize
    from .runtime.settings import EngineConfig, build_run_settings
    from .exportdir import export_settings_for

    ref = resolve_models(export_settings_for(preset), Path(models) if models is not None else None)
    return run_stylize(content, styles, ref.folder, masks, EngineConfig(device=device), build_run_settings(preset, **settings))


def __getattr__(name: str) -> Any:
    # Lazy so that `import onnxstyle` stays cheap and torch-free; the API lives in runtime.
    if name == "Stylizer":
        from .runtime.stylizer import Stylizer

        return Stylizer
    if name in ("RunSettings", "EngineConfig"):
        from .runtime import settings

        return getattr(settings, name)
    raise AttributeError(name)
