"""Which engine runs the graphs (one pure function), and a runner per graph for each engine.

:func:`select_backend` decides from plain data (what is installed, what the CPU can do,
what was asked), so every branch is unit-tested without the hardware. The runners are
the only code that touches onnxruntime's API.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import MissingDependencyError, ModelsError, OnnxStyleError, ProviderError, engine_failure, engine_message
from . import cache
from .providers import CPU, CUDA, TRT, physical_cores, provider_options, select_providers
from .settings import EngineConfig

ORT = "onnxruntime"
OPENVINO = "openvino"


@dataclass(frozen=True)
class Availability:
    """What this machine offers, as plain data (so selection is testable without it)."""

    # onnxruntime's providers; empty: onnxruntime is not installed.
    ort_providers: tuple[str, ...] = ()
    # OpenVINO's runtime is importable and lists a CPU device.
    openvino: bool = False
    # The CPU computes bf16 natively (AVX512_BF16 or AMX): OpenVINO then runs fp32 graphs in bf16.
    bf16_native: bool = False
    cores: int = 1


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # "onnxruntime" or "openvino"
    providers: tuple[str, ...]  # onnxruntime providers, best first (empty for OpenVINO)
    precision: str  # "fp32", "fp16" (TensorRT), "bf16" (OpenVINO)
    device_id: int
    threads: int

    @property
    def per_shape(self) -> bool:
        """TensorRT and OpenVINO (for its memory) build per input shape; onnxruntime's CPU and
        CUDA providers serve every size from one session."""
        return self.backend == OPENVINO or self.providers[:1] == (TRT,)

    def describe(self) -> str:
        if self.backend == OPENVINO:
            return f"OpenVINO CPU {self.precision}"
        return f"{self.providers[0]} {self.precision}"


def import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependencyError(
            "onnxruntime is not installed: pip install 'onnxstyle[ort]' (or '[gpu]' for CUDA/TensorRT)"
        ) from e
    return ort


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def openvino_info() -> tuple[bool, bool]:
    """(OpenVINO usable on the CPU, the CPU has native bf16 as OpenVINO sees it)."""
    try:
        import openvino as ov

        core = ov.Core()
        if "CPU" not in core.available_devices:
            return False, False
        caps = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # not installed; a broken install is an absent one
        return False, False
    # OpenVINO lists BF16 where it has native kernels; the flags confirm it is not emulated.
    native = "BF16" in caps and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return True, native


def available_backends() -> Availability:
    try:
        providers = tuple(import_ort().get_available_providers())
    except MissingDependencyError:
        providers = ()
    has_ov, bf16 = openvino_info()
    return Availability(providers, has_ov, bf16, physical_cores())


def _openvino_choice(avail: Availability, config: EngineConfig, threads: int) -> BackendChoice:
    if not avail.openvino:
        raise MissingDependencyError("--device openvino needs OpenVINO: pip install 'onnxstyle[cpu]' (or pip install openvino)")
    precision = ("bf16" if avail.bf16_native else "fp32") if config.precision == "auto" else config.precision
    if precision == "bf16" and not avail.bf16_native:
        raise ProviderError("--precision bf16: this CPU has no native bf16 (AVX512_BF16 or AMX); OpenVINO runs fp32 here")
    if precision == "fp16":
        raise ProviderError("--precision fp16 is TensorRT's (--device tensorrt); OpenVINO runs bf16 or fp32")
    return BackendChoice(OPENVINO, (), precision, config.device_id, threads)


def _auto_device(avail: Availability, precision: str) -> str:
    """TensorRT → CUDA → OpenVINO → onnxruntime CPU, among what can honour the precision."""
    if TRT in avail.ort_providers and precision in ("auto", "fp32", "fp16"):
        return "tensorrt"
    if CUDA in avail.ort_providers and precision in ("auto", "fp32"):
        return "cuda"
    if avail.openvino and precision != "fp16":
        return "openvino"
    return "cpu"


def select_backend(avail: Availability, config: EngineConfig) -> BackendChoice:
    """The backend for ``config`` on a machine offering ``avail``.

    ``auto`` takes TensorRT → CUDA → OpenVINO → onnxruntime's CPU provider, the fastest
    correct path first; ``auto`` precision is bf16 where OpenVINO has native bf16, fp32
    elsewhere (TensorRT's fp16 only when asked). Explicit requests that cannot be met are
    errors, never silent fallbacks: a GPU asked for and a CPU used would cost 50× the time
    without a word.
    """
    threads = config.threads or avail.cores
    device = _auto_device(avail, config.precision) if config.device == "auto" else config.device
    if device == "openvino":
        return _openvino_choice(avail, config, threads)
    if not avail.ort_providers:
        if avail.openvino:  # an explicit --device (or fp16, which OpenVINO does not run): auto takes OpenVINO
            raise MissingDependencyError(
                f"--device {device} needs onnxruntime, which is not installed (OpenVINO is: --device openvino): "
                "pip install 'onnxstyle[ort]' (or '[gpu]' for CUDA/TensorRT)"
            )
        raise MissingDependencyError(
            "onnxruntime is not installed, nor OpenVINO: pip install 'onnxstyle[cpu]' (OpenVINO), "
            "'onnxstyle[ort]' (onnxruntime's CPU) or 'onnxstyle[gpu]' (CUDA/TensorRT)"
        )
    providers = select_providers(avail.ort_providers, device)
    precision = "fp32" if config.precision == "auto" else config.precision
    if precision == "fp16" and providers[0] != TRT:
        raise ProviderError(f"--precision fp16 needs TensorRT (--device tensorrt); {providers[0]} runs fp32")
    if precision == "bf16":
        raise ProviderError(f"--precision bf16 needs OpenVINO on a CPU with native bf16 (--device openvino); {providers[0]} runs fp32")
    return BackendChoice(ORT, tuple(providers), precision, config.device_id, threads)


class GraphRunner(Protocol):
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def make_runner(
    choice: BackendChoice, folder: Path, graph: str, shapes: dict[str, tuple[int, ...]] | None, fix_hint: str,
    weights: dict[str, float],
) -> GraphRunner:
    """``shapes`` None: a runner for every size (the tiles of a tiled pass)."""
    if choice.backend == OPENVINO:
        from .openvino_backend import OpenVinoRunner

        return OpenVinoRunner(choice, folder, graph, fix_hint, weights, shapes)
    return OrtRunner(choice, folder, graph, shapes, fix_hint)


def release_heap() -> None:
    """Return freed C-heap memory to the system (glibc keeps it otherwise); a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# onnxruntime's optimized CPU model, in the compiled cache: the graph file, and its weights in
# a file beside it (inline they would double the .onnx; an export with external weights.bin
# would otherwise be copied whole into every optimized graph).
OPTIMIZED = "model.onnx"
OPTIMIZED_DATA = "model.weights.bin"


# onnxruntime's exception types for a file that does not parse or load as a graph: the folder's
# fault. Everything else at session creation (a provider that fails, an optimizer or kernel
# error, memory) is the engine's.
_PARSE_FAILURES = ("InvalidProtobuf", "NoSuchFile", "InvalidGraph", "ModelLoadCanceled")
# onnxruntime's generic Fail, when it is about reading the file or its external weights.
_PARSE_TEXT = ("Load model from", "protobuf", "external data", "External initializer", "Failed to load model", "ModelProto")


def is_parse_failure(e: BaseException) -> bool:
    """Whether onnxruntime failed to read the graph file (the folder's fault) rather than to build
    a session from a graph it read (the engine's)."""
    name = type(e).__name__
    if name in _PARSE_FAILURES:
        return True
    text = str(e)
    return name in ("Fail", "InvalidArgument") and any(t.lower() in text.lower() for t in _PARSE_TEXT)


class OrtRunner:
    """One onnxruntime session over one graph. CPU: the optimized model is cached in the
    per-user compiled cache; TensorRT: its engines too; CUDA/TensorRT: constant inputs (the
    targets) are uploaded and bound once."""

    def __init__(self, choice: BackendChoice, folder: Path, graph: str, shapes: dict[str, tuple[int, ...]], fix_hint: str) -> None:
        self.ort = import_ort()
        self.choice = choice
        self.folder = folder
        self.graph = graph
        self.src = folder / f"{graph}.onnx"
        self.fix_hint = fix_hint
        self.session = self._load(shapes)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.gpu = choice.providers[0] in (CUDA, TRT)
        self._binding: Any = None
        self._bound: dict[str, tuple[int, Any]] = {}

    def _options(self) -> Any:
        so = self.ort.SessionOptions()
        so.log_severity_level = 3  # the weight-initializer-as-input notice is by design
        so.intra_op_num_threads = self.choice.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The memory pattern pre-plans one block per shape on top of the arena: with it off the
        # peak of a loss_grad evaluation is 0.3 GB lower at 512 px and 1.4 GB at 1024, and it
        # runs 10-20% faster here (benchmarks/results/memory.md).
        so.enable_mem_pattern = False
        return so

    def _key(self, engine: str) -> cache.CacheKey:
        ident = cache.export_identity(self.folder, self.graph, exact=True)
        device = "cpu" if engine == "onnxruntime" else f"cuda{self.choice.device_id}"
        return cache.CacheKey(ident, engine, self.ort.__version__, self.choice.precision, device)

    def _load(self, shapes: dict[str, tuple[int, ...]]) -> Any:
        first = self.choice.providers[0]
        if first == CPU:
            sess = self._load_cpu()
        elif first == TRT:
            # TensorRT names its engines itself, one per profile (our shapes) in this folder.
            with cache.compiling(self._key("onnxruntime-tensorrt"), cache.shape_name(shapes)) as trt_cache:
                sess = self._session(self._options(), trt_cache, shapes)
        else:
            sess = self._session(self._options(), None, shapes)
        # Optimizing the graph leaves ~100 MB freed but held by the C heap: give it back.
        release_heap()
        return sess

    def _session(self, so: Any, trt_cache: Path | None, shapes: dict[str, tuple[int, ...]]) -> Any:
        opts = provider_options(self.choice.providers, trt_cache, shapes or {}, self.choice.precision == "fp16", self.choice.device_id)
        try:
            return self.ort.InferenceSession(str(self.src), so, providers=list(self.choice.providers), provider_options=opts)
        except MemoryError:
            raise
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            if not is_parse_failure(e):
                raise engine_failure(e, "compile", self.graph, (shapes or {}).get("image"), self.choice.describe()) from e
            raise ModelsError(f"{self.src} cannot be loaded ({engine_message(e)}); re-export with: {self.fix_hint}") from e

    def _load_cpu(self) -> Any:
        """The optimized model from the compiled cache, else optimized now and saved there.

        Kept for what it saves, measured on an export with the shared weights.bin (2 threads,
        a fresh process each time): the features and loss_grad sessions took 0.40-0.45 s
        from the export, 0.07-0.10 s from the optimized copies (lock and lookup included),
        0.48-0.63 s the first time (optimize and save). About 0.35 s per start, for 150 MB
        of cache per export and CPU (the weights, re-laid out, beside each optimized graph).
        """
        with cache.compiling(self._key("onnxruntime"), "optimized") as entry:
            if entry is None:  # no writable cache: optimize in memory, as every time
                return self._session(self._options(), None, {})
            model = entry / OPTIMIZED
            if model.is_file():
                try:
                    return self.ort.InferenceSession(str(model), self._options(), providers=[CPU])
                except Exception:  # onnxruntime's own types
                    # Corrupt, or its weights evicted: dropped and made again from the export.
                    for p in (model, entry / OPTIMIZED_DATA):
                        p.unlink(missing_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=entry))
            try:
                so = self._options()
                so.optimized_model_filepath = str(tmp / OPTIMIZED)
                so.add_session_config_entry("session.optimized_model_external_initializers_file_name", OPTIMIZED_DATA)
                sess = self._session(so, None, {})
                if (tmp / OPTIMIZED).is_file():
                    # The data first: a model file present means its weights are too.
                    if (tmp / OPTIMIZED_DATA).is_file():
                        os.replace(tmp / OPTIMIZED_DATA, entry / OPTIMIZED_DATA)
                    os.replace(tmp / OPTIMIZED, model)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return sess

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        try:
            if self.gpu:
                return dict(zip(names, self._run_bound(feeds, names)))
            # Copies: onnxruntime's outputs are views into its arena; a gradient the optimizer keeps
            # across evaluations would pin its chunk, and the arena would grow by one output's
            # worth of fragments each evaluation (+0.8 GB over 10 evaluations at 1024 px).
            return {n: np.array(v, copy=True) for n, v in zip(names, self.session.run(names, feeds))}
        except (MemoryError, OnnxStyleError):
            raise
        except Exception as e:  # onnxruntime's InvalidArgument, Fail, RuntimeException, …
            image = feeds.get("image")
            raise engine_failure(e, "run", self.graph, None if image is None else tuple(image.shape), self.choice.describe()) from e

    def _run_bound(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """GPU path: one IOBinding per graph; a constant input (same array object as last time:
        the targets, the guide, the weights) stays on the device and bound, only new arrays
        (the image, every evaluation) are uploaded."""
        if self._binding is None:
            self._binding = self.session.io_binding()
            for n in names:
                # Straight into host memory: the optimizer needs the gradient there anyway.
                self._binding.bind_output(n, "cpu")
        for k, v in feeds.items():
            held = self._bound.get(k)
            if held is not None and held[0] == id(v) and k != "image":
                continue
            value = self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", self.choice.device_id)
            self._binding.bind_ortvalue_input(k, value)
            # Holding the array keeps its id from being reused by another object.
            self._bound[k] = (id(v), (v, value))
        self.session.run_with_iobinding(self._binding)
        return [o.numpy() for o in self._binding.get_outputs()]

    def close(self) -> None:
        self._binding = None
        self._bound.clear()
        self.session = None
        release_heap()
