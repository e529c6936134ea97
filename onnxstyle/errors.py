"""Typed errors raised by the library; the CLI alone maps them to messages and exit codes."""

from __future__ import annotations


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


def engine_message(e: BaseException, limit: int = 200) -> str:
    """The first line of an engine's exception, fit for a one-line error: engines quote bytes of a
    damaged file back, which are neither printable nor always valid UTF-8."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    clean = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in first)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."
