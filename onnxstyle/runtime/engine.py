"""onnxruntime sessions over an export: features(image) and loss_grad(image, targets, weights)."""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, ModelsError
from .manifest import Manifest, read_manifest
from .providers import CPU, CUDA, TRT, Device, physical_cores, provider_options, select_providers


def import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependencyError(
            "onnxruntime is not installed: pip install 'onnxstyle[cpu]' (or '[gpu]' for CUDA/TensorRT)"
        ) from e
    return ort


@dataclass
class LossGrad:
    loss: float
    grad: np.ndarray
    terms: dict[str, float] = field(default_factory=dict)


def _cpu_signature() -> str:
    """Optimized CPU models are specific to the ORT build and the CPU's instruction set."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    ort = import_ort()
    blob = f"{ort.__version__}|{platform.machine()}|{flags}".encode()
    return hashlib.sha256(blob).hexdigest()[:12]


class Engine:
    """Both graphs of one export, with sessions kept warm across images."""

    def __init__(
        self,
        models: Path,
        device: Device | str = Device.auto,
        threads: int | None = None,
        fp16: bool = False,
        fix_hint: str = "onnxstyle export",
    ) -> None:
        self.ort = import_ort()
        self.manifest: Manifest = read_manifest(Path(models), fix_hint)
        self.folder = Path(models)
        self.fix_hint = fix_hint
        self.providers = select_providers(self.ort.get_available_providers(), device)
        self.threads = threads or physical_cores()
        self.fp16 = fp16
        self._sessions: dict[tuple[str, int, int], Any] = {}
        self.feature_names = [o["name"] for o in self.manifest.outputs("features")]
        self.weight_defaults = self.manifest.weight_defaults

    @property
    def provider(self) -> str:
        return self.providers[0]

    def _options(self, graph: str) -> Any:
        so = self.ort.SessionOptions()
        so.log_severity_level = 3  # the weight-initializer-as-input notice is by design
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return so

    def _cpu_model_path(self, graph: str) -> tuple[str, str | None]:
        """(path to load, path to save the optimized model to or None)."""
        src = self.folder / f"{graph}.onnx"
        cache = self.folder / "optimized" / f"{graph}.cpu-{_cpu_signature()}.onnx"
        if cache.is_file() and cache.stat().st_mtime >= src.stat().st_mtime:
            return str(cache), None
        return str(src), str(cache)

    def session(self, graph: str, height: int = 0, width: int = 0) -> Any:
        # TensorRT profiles are per size; other providers serve every size from one session.
        key = (graph, height, width) if self.provider == TRT else (graph, 0, 0)
        if key in self._sessions:
            return self._sessions[key]
        so = self._options(graph)
        path, save_to = str(self.folder / f"{graph}.onnx"), None
        if self.provider == CPU:
            path, save_to = self._cpu_model_path(graph)
        tmp_save = None
        if save_to is not None and os.access(self.folder, os.W_OK):
            Path(save_to).parent.mkdir(exist_ok=True)
            fd, tmp_save = tempfile.mkstemp(suffix=".onnx", dir=Path(save_to).parent)
            os.close(fd)
            so.optimized_model_filepath = tmp_save
        opts = provider_options(self.providers, self.folder / "trt-cache", height, width, self.fp16)
        try:
            sess = self.ort.InferenceSession(path, so, providers=self.providers, provider_options=opts)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            if tmp_save:
                os.unlink(tmp_save)
            if path != str(self.folder / f"{graph}.onnx"):
                # A stale or corrupt optimized copy: fall back to the export itself.
                os.unlink(path)
                return self.session(graph, height, width)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelsError(f"{self.folder / (graph + '.onnx')} cannot be loaded ({first}); re-export with: {self.fix_hint}") from e
        if tmp_save:
            if os.path.getsize(tmp_save) > 0:
                os.replace(tmp_save, save_to)  # type: ignore[arg-type]
            else:
                os.unlink(tmp_save)
        self._sessions[key] = sess
        return sess

    def features(self, image: np.ndarray) -> dict[str, np.ndarray]:
        _, _, h, w = image.shape
        sess = self.session("features", h, w)
        return dict(zip(self.feature_names, sess.run(self.feature_names, {"image": _f32(image)})))

    def loss_grad(
        self, image: np.ndarray, targets: dict[str, np.ndarray], weights: dict[str, float] | None = None
    ) -> LossGrad:
        _, _, h, w = image.shape
        sess = self.session("loss_grad", h, w)
        feeds: dict[str, Any] = {"image": _f32(image), **targets}
        for k, v in (weights or {}).items():
            if k not in self.weight_defaults:
                raise ModelsError(f"the export has no weight input {k!r}; it has {sorted(self.weight_defaults)}")
            feeds[k] = np.array(v, np.float32)
        names = [o.name for o in sess.get_outputs()]
        if self.provider in (CUDA, TRT):
            outs = self._run_bound(sess, feeds, names)
        else:
            outs = sess.run(names, feeds)
        res = dict(zip(names, outs))
        terms = {k: float(v) for k, v in res.items() if k.startswith("loss_")}
        return LossGrad(float(res["loss"]), res["grad"], terms)

    def _run_bound(self, sess: Any, feeds: dict[str, Any], names: list[str]) -> list[np.ndarray]:
        """GPU path: bind inputs once and let onnxruntime allocate outputs on the device.

        The targets are constant across iterations; binding them as device OrtValues once
        (cached by identity) saves re-uploading tens of MB per evaluation.
        """
        binding = sess.io_binding()
        for k, v in feeds.items():
            binding.bind_ortvalue_input(k, self._device_value(k, v))
        for n in names:
            # Straight into host memory: the optimizer needs the gradient there anyway.
            binding.bind_output(n, "cpu")
        sess.run_with_iobinding(binding)
        return [o.numpy() for o in binding.get_outputs()]

    def _device_value(self, key: str, value: np.ndarray) -> Any:
        cache = getattr(self, "_dev_cache", None)
        if cache is None:
            cache = self._dev_cache = {}
        if key != "image" and key in cache and cache[key][0] is value:
            return cache[key][1]
        ov = self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0)
        if key != "image":
            cache[key] = (value, ov)
        return ov


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
