"""Weights stored once: one external-data file read by every graph; fp16 storage; old folders.

The references are independent of the storage code: torch autograd (through the exporter's
validation of every output), the arrays the weights loader gives, and the older format's
graphs rebuilt from those arrays with numpy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxstyle.exportdir import WEIGHTS_FILE
from onnxstyle.runtime.engine import Engine
from onnxstyle.runtime.settings import EngineConfig

GRAPHS = ("features.onnx", "loss_grad.onnx", "tile_grad.onnx")


def _external(init: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in init.external_data}


def _inits(folder: Path, graph: str) -> list[onnx.TensorProto]:
    return list(onnx.load(str(folder / graph), load_external_data=False).graph.initializer)


def test_every_graph_reads_each_weight_once_from_one_file(caffe_export: Path, caffe_weights) -> None:  # type: ignore[no-untyped-def]
    where: dict[str, tuple[str, str, str]] = {}
    for graph in GRAPHS:
        for init in _inits(caffe_export, graph):
            nbytes = int(np.prod(init.dims, dtype=np.int64)) * 4
            if nbytes < 4096:
                continue  # constants and loss weights: a few bytes each
            ext = _external(init)
            assert init.data_location == onnx.TensorProto.EXTERNAL, (graph, init.name)
            spot = (ext["location"], ext["offset"], ext["length"])
            # The same tensor in another graph points at the same bytes.
            assert where.setdefault(init.name, spot) == spot
    assert {loc for loc, _, _ in where.values()} == {WEIGHTS_FILE}
    # Every conv kernel up to relu5_1 once, each the loader's array exactly.
    convs = [f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 4, 4, 1)) for i in range(1, n + 1)]
    assert {f"{c}_w" for c in convs} <= set(where)
    blob = (caffe_export / WEIGHTS_FILE).read_bytes()
    total = 0
    for c in convs:
        _, off, length = where[f"{c}_w"]
        got = np.frombuffer(blob[int(off) : int(off) + int(length)], np.float32)
        np.testing.assert_array_equal(got, caffe_weights.convs[c][0].ravel())
        total += int(length)
    assert total > 0.95 * len(blob) - 4096 * len(where)  # nothing else of size in the file
    # The backward's flipped kernels are derived in the graph, not stored again.
    names = {i.name for i in _inits(caffe_export, "loss_grad.onnx")}
    assert not any(n.endswith("_wT") for n in names)


def test_export_folder_is_small(caffe_export: Path) -> None:
    sizes = {p.name: p.stat().st_size for p in caffe_export.rglob("*") if p.is_file()}
    assert sum(sizes.values()) <= 60e6, sizes
    assert not [p for p in caffe_export.iterdir() if p.is_dir()]  # no compiled engines in the folder


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:  # type: ignore[type-arg]
    from onnxstyle.export.exporter import export
    from onnxstyle.exportdir import ExportSettings

    result = export(ExportSettings(weights_dtype="fp16"), tmp_path_factory.mktemp("fp16") / "m")
    return result.folder, result.reports


@pytest.mark.slow
def test_fp16_storage_validates_and_costs_little(fp16_export, caffe_export: Path) -> None:  # type: ignore[no-untyped-def]
    folder, reports = fp16_export
    # Validated against autograd on the rounded kernels, every output, to fp32 limits.
    # Every output on onnxruntime (26), loss and gradient on OpenVINO fp32 (2), and in bf16 (2)
    # where the CPU computes it natively.
    from onnxstyle.runtime.backends import available_backends

    expected = 28 + (2 if available_backends().bf16_native else 0)
    assert reports and all(r.ok() for r in reports) and all(len(r.checks) >= expected for r in reports)
    sizes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert sizes <= 32e6
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weights"]["stored"]["dtype"] == "fp16"
    # Against the fp32 export (the original kernels), on a photo-like image: within bf16's limits.
    rng = np.random.default_rng(1)
    content, style = rng.random((1, 3, 48, 64), np.float32), rng.random((1, 3, 40, 40), np.float32)
    image = np.clip(content + 0.1 * rng.standard_normal(content.shape).astype(np.float32), 0, 1)
    results = []
    for f in (caffe_export, folder):
        engine = Engine(f, EngineConfig(device="cpu"))
        ct, st = engine.features(content), engine.features(style)
        feeds = {**{k: v for k, v in ct.items() if k.startswith("content_")}, **{k: v for k, v in st.items() if k.startswith("gram_")}}
        feeds["guide"] = np.ones((1, 1, *image.shape[2:]), np.float32)
        results.append(engine.loss_grad(image, feeds))
    a, b = results
    assert abs(a.loss - b.loss) / a.loss < 1e-2
    cos = float((a.grad * b.grad).sum() / (np.linalg.norm(a.grad) * np.linalg.norm(b.grad)))
    assert cos > 0.999 and np.abs(a.grad - b.grad).max() / np.abs(a.grad).max() < 0.05


def _as_format_3(src: Path, dst: Path) -> None:
    """A format-3 folder as the previous onnxstyle wrote it: weights inline in every graph, the
    backward's flipped kernels stored as ``convN_wT`` initializers, no weights.bin."""
    shutil.copytree(src, dst)
    for graph in GRAPHS:
        model = onnx.load(str(dst / graph))  # external data read in
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        keep = []
        for node in model.graph.node:
            out = node.output[0]
            if node.op_type == "Transpose" and out.endswith("_wT"):
                w = inits[out[:-1]].transpose(1, 0, 2, 3)  # convN_wT from convN_w
                wt = w if out == "prep_wT" else w[:, :, ::-1, ::-1]
                model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(wt), out))
            else:
                keep.append(node)
        del model.graph.node[:]
        model.graph.node.extend(keep)
        onnx.save(model, str(dst / graph))
    (dst / WEIGHTS_FILE).unlink()
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["format_version"] = 3
    manifest["files"] = {g: {"bytes": (dst / g).stat().st_size} for g in GRAPHS}
    (dst / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", "openvino"])
def test_format_3_folders_still_load(caffe_export: Path, tmp_path: Path, device: str) -> None:
    old = tmp_path / "v3"
    _as_format_3(caffe_export, old)
    assert (old / "loss_grad.onnx").stat().st_size > 50e6  # really inline
    rng = np.random.default_rng(2)
    content = rng.random((1, 3, 40, 56), np.float32)
    image = np.clip(content + 0.1 * rng.standard_normal(content.shape).astype(np.float32), 0, 1)
    out = []
    for folder in (caffe_export, old):
        engine = Engine(folder, EngineConfig(device=device, precision="fp32"))
        feats = engine.features(content)
        feeds = {k: v for k, v in feats.items() if k.startswith(("content_", "gram_"))}
        feeds["guide"] = np.ones((1, 1, *image.shape[2:]), np.float32)
        out.append(engine.loss_grad(image * 0.9 + 0.05, feeds))
    assert engine.manifest.version == 3
    np.testing.assert_allclose(out[1].loss, out[0].loss, rtol=1e-4)
    np.testing.assert_allclose(out[1].grad, out[0].grad, atol=1e-4 * np.abs(out[0].grad).max())
