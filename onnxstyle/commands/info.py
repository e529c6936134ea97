"""``onnxstyle info`` and ``onnxstyle cache``: what this machine has, and the caches."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..errors import OnnxStyleError
from ..runtime.settings import EngineConfig
from ..version import __version__
from .options import handle_errors, out


@handle_errors
def info() -> None:
    """Versions, backends and devices, and the exports in the cache."""
    from ..exportdir import cache_root
    from ..runtime import cache as compiled_cache
    from ..runtime.backends import available_backends, select_backend

    out.print(f"onnxstyle {__version__}, Python {sys.version.split()[0]}")
    avail = available_backends()
    if avail.ort_providers:
        import onnxruntime

        out.print(f"onnxruntime {onnxruntime.__version__}: {', '.join(avail.ort_providers)}")
    else:
        out.print("onnxruntime: not installed (pip install 'onnxstyle[ort]')")
    out.print(_openvino_line(avail))
    try:
        choice = select_backend(avail, EngineConfig())
        out.print(f"selected (--device auto): {choice.describe()}, {choice.threads} threads")
    except OnnxStyleError as e:
        out.print(f"selected (--device auto): none ({e})")
    root = cache_root() / "exports"
    out.print(escape(compiled_cache.info_line()))
    out.print(f"export cache: {root}")
    found = sorted(p for p in root.glob("*") if (p / "manifest.json").is_file()) if root.is_dir() else []
    if not found:
        out.print("  (no exports yet: run `onnxstyle export`, or `onnxstyle stylize` exports on first use)")
    for p in found:
        try:
            m = json.loads((p / "manifest.json").read_text())
            out.print(
                f"  {p.name}: preset {m.get('preset')}, {m['weights']['source']} weights, {m['pooling']} pooling, "
                f"content {','.join(m['layers']['content'])}, style {','.join(m['layers']['style'])}, "
                f"format {m.get('format_version')}"
            )
        except (OSError, ValueError, KeyError) as e:
            out.print(f"  {p.name}: unreadable manifest ({type(e).__name__})")


def _openvino_line(avail: Any) -> str:
    """OpenVINO's version, its devices, and whether this CPU computes bf16 natively."""
    if not avail.openvino:
        return "openvino: not installed (pip install 'onnxstyle[cpu]')"
    import openvino as ov

    core = ov.Core()
    devices = ", ".join(f"{d} ({core.get_property(d, 'FULL_DEVICE_NAME')})" for d in core.available_devices)
    bf16 = "native bf16: yes (AVX512_BF16/AMX)" if avail.bf16_native else "native bf16: no (fp32)"
    return f"openvino {ov.__version__.split('-')[0]}: {devices}; {bf16}"


@handle_errors
def cache(
    action: Annotated[str, typer.Argument(help="show (the default) or clear")] = "show",
    max_size: Annotated[Optional[str], typer.Option("--max", help="trim to this size now, e.g. 500M")] = None,
) -> None:
    """The compiled-model cache (OpenVINO blobs, TensorRT engines, onnxruntime's optimized
    models): where it is and its size; `clear` empties it. Capped by ONNXSTYLE_CACHE_MAX (default 2G)."""
    from ..runtime import cache as compiled_cache

    out.print(escape(compiled_cache.command(action, max_size)))
