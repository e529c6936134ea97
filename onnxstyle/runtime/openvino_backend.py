"""OpenVINO's CPU runtime over the exported graphs, unchanged.

OpenVINO reads the ONNX graphs as they are, picks Winograd convolutions where they pay,
and on CPUs with native bf16 (AVX512_BF16, AMX) runs them in bf16 when asked
(``INFERENCE_PRECISION_HINT``). Two things differ from onnxruntime and are handled here:

* an ONNX initializer that is also a graph input (our loss weights) becomes a constant in
  OpenVINO; those are turned back into parameters so that a weight changes per run;
* compiled models are cached (OpenVINO's ``CACHE_DIR``) in the per-user compiled cache
  (:mod:`.cache`, bounded), never in the models folder, so a second start skips compilation
  and a read-only models folder works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, ModelsError, OnnxStyleError, engine_failure, engine_message
from . import cache

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
        self.graph = graph
        self.device = choice.describe()
        # A file that does not parse is the folder's fault (truncated, overwritten, another format).
        try:
            model = _read_onnx(src)
            if self.defaults:
                weights_as_parameters(model, self.defaults)
        except Exception as e:  # OpenVINO's GeneralFailure and kin are not RuntimeErrors
            raise ModelsError(f"{src} cannot be loaded by OpenVINO ({engine_message(e)}); re-export with: {fix_hint}") from e
        # From here on the graph has been read: a failure is OpenVINO's (a shape its pools or
        # convolutions cannot take, memory, a precision), not the folder's, and re-exporting
        # would give the same graph.
        shape = (shapes or {}).get("image")
        try:
            if shapes:
                import openvino as ov

                model.reshape({k: ov.PartialShape(list(v)) for k, v in shapes.items() if k not in self.defaults})
            self.output_names, self.compiled = self._compile(core, model, choice, folder, graph, shapes)
            self.request = self.compiled.create_infer_request()
        except (MemoryError, OnnxStyleError):
            raise
        except Exception as e:  # OpenVINO's GeneralFailure and kin are not RuntimeErrors
            raise engine_failure(e, "compile", graph, shape, self.device) from e
        self._ports = dict(zip(self.output_names, self.compiled.outputs))

    @staticmethod
    def _compile(
        core: Any, model: Any, choice: Any, folder: Path, graph: str, shapes: dict[str, tuple[int, ...]] | None
    ) -> tuple[list[str], Any]:
        """(output names, compiled model): compiled with our settings, through the compiled cache."""
        import openvino as ov

        precision = "bf16" if choice.precision == "bf16" else "f32"
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": int(choice.threads),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # Pinned, every process puts its threads on the first cores: two 1-thread workers
            # (batch, serve, Ray actors) then share core 0, at 0.22 s per evaluation each instead
            # of 0.105 s (256 px, bf16). One process on every core runs as fast unpinned.
            "ENABLE_CPU_PINNING": False,
        }
        # Names as the graph declares them: compilation may attach other names to a port.
        names = [o.get_any_name() for o in model.outputs]
        # Under the cache's lock: two processes compiling into one CACHE_DIR at once fail in
        # OpenVINO ("cannot set permissions"), and no blob is evicted while being read.
        # The thread count is in OpenVINO's blob hash: another count is another blob.
        key = cache.CacheKey(cache.export_identity(folder, graph), "openvino", ov.__version__, precision)
        with cache.compiling(key, f"{cache.shape_name(shapes)};threads={int(choice.threads)}") as cache_dir:
            if cache_dir is not None:
                config["CACHE_DIR"] = str(cache_dir)
            return names, core.compile_model(model, "CPU", config)

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        inputs = {**self.defaults, **feeds}
        try:
            self.request.infer(inputs)
        except (MemoryError, OnnxStyleError):
            raise
        except Exception as e:  # a feed of a shape it was not compiled for, memory, …
            image = feeds.get("image")
            raise engine_failure(e, "run", self.graph, None if image is None else tuple(image.shape), self.device) from e
        # The request reuses its output buffers on the next call: hand out copies.
        return {n: np.array(self.request.get_tensor(self._ports[n]).data, copy=True) for n in names}

    def close(self) -> None:
        self.request = None
        self.compiled = None
