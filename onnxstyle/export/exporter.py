"""Export: weights → two ONNX graphs + manifest, written atomically, then validated."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from filelock import FileLock

from ..version import __version__
from ..errors import ExportError
from ..reference.vgg import VGG19
from ..reference.weights import VGGWeights, load_weights
from ..exportdir import GRAPHS, MANIFEST, METADATA_KEY, OPTIONAL_GRAPHS, WEIGHTS_FILE, default_export_dir
from ..spec import LossSpec
from ..layers import LAYER_CHANNELS
from ..exportdir import FORMAT_VERSION, ExportSettings, export_key, file_sha256
from .graphs import OPSET, Weights, build_features, build_loss_grad, build_tile_grad
from .storage import round_to, save_graph, write_shared
from .validate import DEFAULT_SIZES, SizeReport, selfcheck_record, validate_export


@dataclass
class ExportResult:
    folder: Path
    manifest: dict[str, Any]
    reports: list[SizeReport] = field(default_factory=list)
    seconds: float = 0.0


def _io_entries(model: onnx.ModelProto, kinds: dict[str, str], defaults: dict[str, float]) -> dict[str, Any]:
    def shape(vi: onnx.ValueInfoProto) -> list[Any]:
        return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]

    ins = []
    for vi in model.graph.input:
        e: dict[str, Any] = {"name": vi.name, "kind": kinds.get(vi.name, "weight"), "shape": shape(vi)}
        if e["kind"] == "weight":
            e["default"] = defaults[vi.name]
        ins.append(e)
    outs = [{"name": vi.name, "kind": kinds.get(vi.name, "loss term"), "shape": shape(vi)} for vi in model.graph.output]
    return {"inputs": ins, "outputs": outs}


def build_manifest(settings: ExportSettings, w: VGGWeights, graphs: dict[str, onnx.ModelProto]) -> dict[str, Any]:
    import torch

    spec = settings.spec
    kinds = {"image": "image", "guide": "guide", "loss": "loss", "grad": "gradient", "temporal_target": "temporal target", "temporal_map": "temporal map"}
    kinds.update({f"content_{n}": "content target" for n in spec.content_layers})
    kinds.update({f"gram_{n}": "style target" for n in spec.style_layers})
    kinds.update({f"gramsum_{n}": "style sum" for n in spec.style_layers})
    kinds.update({f"mass_{n}": "style mass" for n in spec.style_layers})
    kinds.update({"inner": "tile inner region"})
    kinds.update({f"content_scale_{n}": "tile content scale" for n in spec.content_layers})
    kinds.update({f"gramgrad_{n}": "tile gram gradient" for n in spec.style_layers})
    defaults = spec.weight_defaults()
    return {
        "format_version": FORMAT_VERSION,
        "onnxstyle_version": __version__,
        "preset": settings.preset,
        "settings_key": export_key(settings),
        "layers": {
            "content": list(spec.content_layers),
            "style": list(spec.style_layers),
            "deepest": spec.deepest,
            "channels": {n: LAYER_CHANNELS[n] for n in (*spec.content_layers, *spec.style_layers)},
        },
        "pooling": spec.pooling,
        "spec": spec.to_dict(),
        "weights": {"source": w.source, "path": w.path, "sha256": w.sha256, "requested": settings.weights},
        "preprocessing": {"graph_input": "RGB float32 in [0,1], NCHW, batch 1", **w.preprocessing.to_dict()},
        "opset": OPSET,
        "exporter": {
            "onnxstyle": __version__,
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "method": "adjoint graph built with onnx.helper from forward ops; validated against torch autograd",
        },
        "graphs": {name: _io_entries(model, kinds, defaults) for name, model in graphs.items()},
    }


def export(
    settings: ExportSettings,
    out: Path | None = None,
    validate: bool = True,
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES,
    log: Callable[[str], None] | None = None,
    overwrite: bool = True,
) -> ExportResult:
    """Write a validated export to ``out`` (default: the cache folder for these settings)."""
    t0 = time.perf_counter()
    say = log or (lambda s: None)
    w = load_weights(settings.weights)
    if settings.weights not in ("caffe", "torchvision"):
        settings = settings.replace(weights_sha256=w.sha256)
    folder = Path(out) if out is not None else default_export_dir(settings)
    spec = settings.spec
    # Rounded to the stored dtype first: graphs and the reference model then compute the same
    # function, and validation holds both to fp32 limits.
    w.convs = {k: (round_to(settings.weights_dtype, k_w), b) for k, (k_w, b) in w.convs.items()}
    gw = Weights(dict(w.convs), *w.preprocessing.affine())
    say(f"building graphs up to {spec.deepest} ({w.source} weights, {spec.pooling} pooling)")
    graphs = {"features": build_features(spec, gw), "loss_grad": build_loss_grad(spec, gw)}
    if spec.guided:
        graphs["tile_grad"] = build_tile_grad(spec, gw)
    manifest = build_manifest(settings, w, graphs)

    folder.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp folder and rename: readers never see a half-written
    # export, and two exporters racing for one cache folder cannot interleave files.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        stored = write_shared(graphs, _weight_names(gw), tmp, settings.weights_dtype)
        manifest["weights"]["stored"] = {k: stored[k] for k in ("dtype", "sha256")}
        blob = json.dumps(manifest, sort_keys=True)
        files: dict[str, Any] = {WEIGHTS_FILE: {"bytes": stored["bytes"], "sha256": stored["sha256"]}}
        for graph, model in graphs.items():
            name = f"{graph}.onnx"
            assert name in GRAPHS + OPTIONAL_GRAPHS
            onnx.helper.set_model_props(model, {METADATA_KEY: blob})
            save_graph(model, tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(str(tmp / name))}
        manifest["files"] = files
        reference = VGG19(w, last=spec.deepest, pooling=spec.pooling).eval() if validate else None
        record = selfcheck_record(reference, spec) if reference is not None else None
        if record is not None:  # what the models check holds each machine's engine to (runtime/selfcheck.py)
            manifest["selfcheck"] = record
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        reports: list[SizeReport] = []
        if validate:
            say("validating against torch autograd at " + ", ".join(f"{h}x{w_}" for h, w_ in sizes))
            assert reference is not None
            reports = validate_export(tmp, reference, spec, sizes)
            bad = [c for r in reports for c in r.failures()]
            if bad:
                raise ExportError(f"export failed validation ({len(bad)} outputs): " + "; ".join(c.line() for c in bad))
        _commit(tmp, folder, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(folder, manifest, reports, time.perf_counter() - t0)


def _weight_names(w: Weights) -> set[str]:
    """The initializers that hold VGG weights (the same names in every graph)."""
    return {"prep_w", "prep_b", *(f"{n}_{k}" for n in w.convs for k in ("w", "b"))}


def _commit(tmp: Path, folder: Path, overwrite: bool) -> None:
    # Two exporters may finish at once (two `stylize` runs exporting on first use): the
    # lock serialises the rename dance so that neither sees the other's half-swapped state.
    with FileLock(folder.parent / f".{folder.name}.lock"):
        _swap(tmp, folder, overwrite)


def _swap(tmp: Path, folder: Path, overwrite: bool) -> None:
    if folder.exists():
        if not overwrite:
            raise ExportError(f"{folder} already exists")
        if not (folder / MANIFEST).exists() and any(folder.iterdir()):
            raise ExportError(f"{folder} exists and is not an onnxstyle export; choose another --out")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except OSError:
            os.rename(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, folder)
        except OSError as e:
            # Another exporter won the race to an identical-settings folder: keep theirs.
            if (folder / MANIFEST).exists():
                return
            raise ExportError(f"could not write {folder}: {e}") from e


def spec_for(preset: str, **overrides: Any) -> LossSpec:
    from ..spec import preset_spec

    base = preset_spec(preset)
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})
