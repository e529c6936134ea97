"""The VGG weights stored once: one external-data file that every graph of an export reads.

Each graph is built with its weights inline (``graphs.py``); here the named weight
initializers of all graphs are replaced by references (ONNX external data: location,
offset, length) into one file, ``weights.bin``. The graphs built from one set of arrays
hold identical tensors under identical names, so one copy serves features, loss_grad and
tile_grad alike: 52 MB on disk for VGG19 up to relu5_1 instead of 260 MB.

``fp16`` storage halves the file again: the conv kernels are stored as float16 and a Cast
in each graph restores float32, which the engines fold once at load. The exporter rounds
the reference model's weights the same way, so validation stays exact (what the graphs
compute is checked to fp32 limits); what the rounding itself costs against the original
weights is measured in ``benchmarks/precision.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from ..exportdir import WEIGHTS_FILE

# Offsets aligned to the page size so that engines may map each tensor straight from the file.
ALIGN = 4096
WEIGHT_DTYPES = ("fp32", "fp16")
STORED_SUFFIX = ".fp16"


def round_to(dtype: str, array: np.ndarray) -> np.ndarray:
    """The float32 values a kernel has once stored in ``dtype`` and cast back."""
    return array.astype(np.float16).astype(np.float32) if dtype == "fp16" else array


def _half(name: str, dtype: str) -> bool:
    """Conv kernels go to the storage dtype; biases and the 3×3 preprocessing map stay float32
    (a few KB, and Caffe's 255 scale and means want the bits)."""
    return dtype == "fp16" and name.endswith("_w") and name != "prep_w"


def write_shared(graphs: dict[str, onnx.ModelProto], names: set[str], folder: Path, dtype: str = "fp32") -> dict[str, object]:
    """Move the initializers named in ``names`` out of every graph into ``folder/weights.bin``
    (each array once) and return the file's manifest entry. The graphs are changed in place."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights dtype {dtype!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
    offsets: dict[str, tuple[int, int]] = {}
    digest = hashlib.sha256()
    path = folder / WEIGHTS_FILE
    with open(path, "wb") as f:
        for model in graphs.values():
            for init in model.graph.initializer:
                if init.name not in names or init.name in offsets:
                    continue
                stored = numpy_helper.to_array(init)
                if _half(init.name, dtype):
                    stored = stored.astype(np.float16)
                pad = -f.tell() % ALIGN
                f.write(b"\0" * pad)
                digest.update(b"\0" * pad)
                blob = np.ascontiguousarray(stored).tobytes()
                offsets[init.name] = (f.tell(), len(blob))
                f.write(blob)
                digest.update(blob)
    for model in graphs.values():
        _reference(model, offsets, dtype)
    return {"name": WEIGHTS_FILE, "dtype": dtype, "bytes": path.stat().st_size, "sha256": digest.hexdigest(), "align": ALIGN}


def _reference(model: onnx.ModelProto, offsets: dict[str, tuple[int, int]], dtype: str) -> None:
    """Point a graph's weight initializers at the shared file (with a Cast where stored in fp16)."""
    casts = []
    for init in model.graph.initializer:
        if init.name not in offsets:
            continue
        name = init.name
        if _half(name, dtype):
            stored_name = init.name = name + STORED_SUFFIX
            init.data_type = TensorProto.FLOAT16
            casts.append(helper.make_node("Cast", [stored_name], [name], name=f"{name}__cast", to=TensorProto.FLOAT))
        offset, length = offsets[name]
        init.raw_data = b"\0"  # set_external_data insists on a raw_data field; cleared below
        external_data_helper.set_external_data(init, WEIGHTS_FILE, offset=offset, length=length)
        init.data_location = TensorProto.EXTERNAL
        init.ClearField("raw_data")
    # A Cast must come before its consumers: nodes are kept in topological order.
    for node in reversed(casts):
        model.graph.node.insert(0, node)


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Write the graph alone: its weights already live in the shared file."""
    path.write_bytes(model.SerializeToString())
