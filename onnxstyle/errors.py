"""Typed errors raised by the library, each with its exit code; :func:`describe` turns any error
that reaches an edge (a command, a batch worker, the service) into one line and that code."""

from __future__ import annotations

import re


class OnnxStyleError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""

    exit_code = 1


class WeightsError(OnnxStyleError):
    """Weights file missing, of an unknown format, or with wrong keys, shapes or hash."""

    exit_code = 3


class ExportError(OnnxStyleError):
    """An export could not be written or did not validate against torch."""

    exit_code = 4


class ModelsError(OnnxStyleError):
    """A models folder is missing, corrupt, of another format version or of other settings."""

    exit_code = 5


class ImageError(OnnxStyleError):
    """An input image is missing, unreadable or not an image."""

    exit_code = 6


class OutputError(OnnxStyleError):
    """The output path cannot be written (missing folder, unknown extension, same as an input)."""

    exit_code = 7


class ProviderError(OnnxStyleError):
    """The requested execution provider is not available in this onnxruntime."""

    exit_code = 8


class SizeError(OnnxStyleError, ValueError):
    """An image's working size is too small for the network: a usage error (exit 2, HTTP 422).

    A ValueError too, so that code refusing bad settings with ``except ValueError`` (the
    service's intake) refuses this the same way without knowing the type.
    """

    exit_code = 2


class EngineError(OnnxStyleError):
    """An engine failed to compile or run a graph that it had read: the engine's failure (or the
    input's), not the models folder's, so re-exporting would not help."""

    exit_code = 1

    def __init__(self, message: str, stage: str = "", graph: str = "", shape: str = "", device: str = "") -> None:
        super().__init__(message)
        self.stage, self.graph, self.shape, self.device = stage, graph, shape, device


class DeviceError(EngineError, ProviderError):
    """An engine failed because its device or precision is missing (a driver, a library)."""

    exit_code = 8


class OptimizationError(OnnxStyleError):
    """The optimization failed repeatedly (NaN/Inf) and stopped; the best image was kept."""

    exit_code = 9


class MissingDependencyError(OnnxStyleError):
    """An optional dependency (torch for export, onnxruntime for running) is not installed."""

    exit_code = 10


class ResourceError(OnnxStyleError):
    """The working set of a run would not fit in this machine's memory."""

    exit_code = 11


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, delivered as a KeyboardInterrupt) stopped a run.

    A KeyboardInterrupt, so nothing that does not know this type can swallow it by
    accident; it carries the best result so far (``partial``, None when the run had not
    evaluated anything yet) and the interrupt that caused it (``cause``), so the caller
    can keep the image and choose the exit code.
    """

    def __init__(self, partial: object | None, cause: BaseException | None = None) -> None:
        super().__init__("interrupted")
        self.partial = partial
        self.cause = cause


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by a signal handler that a program (the CLI, a worker) installs."""


# A C++ source location as engines quote them ("failed at src/core/.../pooling_util.hpp:149:",
# "Exception from src/inference/src/cpp/core.cpp:112:", "/onnxruntime_src/.../conv.cc:42 ...").
_SOURCE = re.compile(r"(?:\s*\b(?:at|from)\s+)?(?:[\w.+-]*/)*[\w.+-]+\.(?:cpp|cc|cxx|cu|hpp|hh|hxx|h|c)(?::\d+)+:?")
# A path into an installed package: where the engine lives is none of the user's business.
_INTERNAL = re.compile(r"(?:[A-Za-z]:)?[^\s'\"()]*[/\\](?:site|dist)-packages[/\\][^\s'\":()]*")
# OpenVINO's assertion line, "Check 'cmp::le(kernel, dim.get_length())' failed": the condition
# in its source; the explanation is on the lines after it.
_CHECK = re.compile(r"^Check '.*' failed$")


# onnxruntime's wording around a kernel's message: "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :
# Non-zero status code returned while running SpaceToDepth node. Name:'x' Status Message: …".
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : ")
_ORT_NODE = re.compile(r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message: ")


def _clean_line(line: str) -> str:
    line = _ORT_NODE.sub(r"\1 node '\2': ", _ORT_PREFIX.sub("", line))
    line = _SOURCE.sub("", line)
    line = _INTERNAL.sub(lambda m: re.split(r"[/\\]", m.group(0))[-1] or "(internal)", line)
    line = re.sub(r"^Exception(?: from)?:?\s*$", "", line.strip())
    return re.sub(r"\s{2,}", " ", line).strip()


def engine_message(e: BaseException, limit: int = 200) -> str:
    """An engine's exception as one line fit for the user: the first line of its text, without
    C++ source locations or paths into installed packages (``--verbose`` shows those), and for
    OpenVINO's "Check '…' failed" the explanation that follows it. Engines also quote bytes of a
    damaged file back, which are neither printable nor always valid UTF-8."""
    lines = [ln for ln in (_clean_line(x) for x in str(e).strip().splitlines()) if ln]
    first = lines[0] if lines else type(e).__name__
    if _CHECK.match(first):
        # The last line that is not a heading ("While validating node …:") explains the check.
        detail = [ln for ln in lines[1:] if not ln.endswith(":")]
        first = detail[-1] if detail else first
    clean = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in first)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


# What an engine says when its device or precision is missing rather than the graph at fault.
_NO_DEVICE = re.compile(
    r"no CUDA-capable device|CUDA driver version is insufficient|CUDA failure 100|cudaErrorNoDevice|"
    r"lib(?:cudnn|cublas|cublasLt|cudart|nvinfer)\S*\.so|LoadLibrary failed|not supported on this (?:platform|device)|"
    r"(?:bf16|bfloat16|f16|fp16)\b.*\bnot supported",
    re.IGNORECASE,
)
# What an engine says when it ran out of memory: the way out is a smaller size, not a re-export.
_NO_MEMORY = re.compile(r"bad_alloc|out of memory|Failed to allocate|cannot allocate|OOM\b", re.IGNORECASE)


def engine_failure(e: BaseException, stage: str, graph: str, shape: tuple[int, ...] | None, device: str) -> EngineError:
    """The typed error for an engine that failed to ``stage`` ("compile", "run") ``graph`` for an
    input of ``shape`` (None: compiled for every size) on ``device`` ("OpenVINO CPU bf16")."""
    what = "x".join(map(str, shape)) if shape else "any size"
    text = engine_message(e)
    full = str(e)
    if type(e).__name__ == "EPFail" or _NO_DEVICE.search(full):
        return DeviceError(
            f"{device} could not {stage} the {graph} graph for an image of {what}: the device or precision is not "
            f"usable here ({text}); choose another --device or --precision", stage, graph, what, device,
        )
    hint = "; try a smaller --size (or --tile auto)" if _NO_MEMORY.search(full) else "; the engine failed, not the models folder"
    return EngineError(f"{device} could not {stage} the {graph} graph for an image of {what} ({text}){hint}", stage, graph, what, device)


EXIT_USAGE = 2


def describe(e: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) of an error the user can act on: the library's typed errors
    with their own code, a setting refused by the library (ValueError) as a usage error, memory
    run out as 1; None for anything else (a bug: the edge decides how to show it)."""
    if isinstance(e, OnnxStyleError):
        return str(e), e.exit_code
    if isinstance(e, ValueError):
        return str(e), EXIT_USAGE
    if isinstance(e, MemoryError):
        return "out of memory; try a smaller --size", 1
    return None
