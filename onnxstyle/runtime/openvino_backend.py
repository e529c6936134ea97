"""OpenVINO's CPU runtime over the exported graphs, unchanged.

OpenVINO reads the ONNX graphs as they are, picks Winograd convolutions where they pay,
and on CPUs with native bf16 (AVX512_BF16, AMX) runs them in bf16 when asked
(``INFERENCE_PRECISION_HINT``). Two things differ from onnxruntime and are handled here:

* an ONNX initializer that is also a graph input (our loss weights) becomes a constant in
  OpenVINO; those are turned back into parameters so that a weight changes per run;
* compiled models are cached (OpenVINO's ``CACHE_DIR``) beside the export, or in the
  per-user cache when the export is read-only, so a second start skips compilation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import cache_root
from ..errors import MissingDependencyError, ModelsError, engine_message

_CORE: Any = None


def _core() -> Any:
    """One OpenVINO core per process: it owns the thread pool and the compiled-model cache."""
    global _CORE
    if _CORE is None:
        try:
            import openvino as ov
        except ImportError as e:
            raise MissingDependencyError("OpenVINO is not installed: pip install 'onnxstyle[cpu]' (or pip install openvino)") from e
        _CORE = ov.Core()
    return _CORE


def _read_onnx(path: Path) -> Any:
    """Through the ONNX frontend alone: ``Core.read_model`` tries every frontend on a file that
    does not parse, and TensorFlow's logs the file's raw bytes to stderr."""
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("onnx")
    return frontend.convert(frontend.load(str(path)))


def cache_dir(folder: Path) -> Path:
    """Compiled blobs beside the export when it is writable, else in the per-user cache."""
    here = folder / "openvino-cache"
    if os.access(folder, os.W_OK):
        return here
    return cache_root() / "openvino" / folder.resolve().as_posix().strip("/").replace("/", "_")


@contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    with open(cache / ".lock", "a") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, as before
            pass
        yield


def weights_as_parameters(model: Any, defaults: dict[str, float]) -> None:
    """Turn the loss-weight constants back into graph inputs (scalars, f32)."""
    from openvino import opset13 as ops

    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_friendly_name() in defaults:
            name = op.get_friendly_name()
            param = ops.parameter([], np.float32, name=name)
            param.output(0).get_tensor().set_names({name})
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(param.output(0))
            found.append(param)
    model.add_parameters(found)
    model.validate_nodes_and_infer_types()


class OpenVinoRunner:
    """One compiled model and one infer request over one graph.

    ``shapes`` given: compiled for exactly those input shapes. OpenVINO then plans its buffers
    statically and reuses them: at 1024x768 a bf16 evaluation peaks at 1.4 GB against 2.5 GB
    compiled for dynamic shapes, at the same speed, for one compilation per size (about a
    second, cached on disk). ``shapes`` None: dynamic, for the varying tiles of a tiled pass.
    """

    def __init__(
        self, choice: Any, folder: Path, graph: str, fix_hint: str, weights: dict[str, float],
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        core = _core()
        src = folder / f"{graph}.onnx"
        self.defaults = {k: np.array(v, np.float32) for k, v in weights.items()}
        try:
            model = _read_onnx(src)
            if self.defaults:
                weights_as_parameters(model, self.defaults)
            if shapes:
                import openvino as ov

                model.reshape({k: ov.PartialShape(list(v)) for k, v in shapes.items() if k not in self.defaults})
        except Exception as e:  # OpenVINO's GeneralFailure and kin are not RuntimeErrors
            first = engine_message(e)
            raise ModelsError(f"{src} cannot be loaded by OpenVINO ({first}); re-export with: {fix_hint}") from e
        cache = cache_dir(folder)
        cache.mkdir(parents=True, exist_ok=True)
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if choice.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": int(choice.threads),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "CACHE_DIR": str(cache),
            # Pinned, every process puts its threads on the first cores: two 1-thread workers
            # (batch, serve, Ray actors) then share core 0, at 0.22 s per evaluation each instead
            # of 0.105 s (256 px, bf16). One process on every core runs as fast unpinned.
            "ENABLE_CPU_PINNING": False,
        }
        # Names as the graph declares them: compilation may attach other names to a port.
        self.output_names = [o.get_any_name() for o in model.outputs]
        with _cache_lock(cache):
            # Two processes compiling into one cache at once fail in OpenVINO ("cannot set
            # permissions"); the lock makes the second wait and then load the first's blob.
            self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._ports = dict(zip(self.output_names, self.compiled.outputs))

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        inputs = {**self.defaults, **feeds}
        self.request.infer(inputs)
        # The request reuses its output buffers on the next call: hand out copies.
        return {n: np.array(self.request.get_tensor(self._ports[n]).data, copy=True) for n in names}

    def close(self) -> None:
        self.request = None
        self.compiled = None
