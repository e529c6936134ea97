"""The worker of a batch: one warm stylizer that takes images (or video chunks) one after
another, in a local process or as a Ray actor.

Bytes in, bytes out: a worker decodes its input (a path it can read, or the file's bytes when
it runs on another machine) and returns the encoded PNG; the driver alone writes files, so an
output is either whole or absent whatever happens to a worker.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OnnxStyleError, OptimizationError, describe
from ..runtime import inputs
from ..runtime.image_io import DEFAULT_MAX_PIXELS
from ..runtime.settings import EngineConfig, RunSettings

if TYPE_CHECKING:
    from ..video.temporal import VideoSettings

@dataclass(frozen=True)
class ModelsSource:
    """Where a worker finds the export: a folder it can read (this machine, a shared path),
    or the files' bytes in Ray's object store (put there once, fetched once per actor)."""

    folder: str
    fix: str
    # File name → object reference of its bytes; None: read ``folder`` directly.
    blobs: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, sent once when it starts (picklable)."""

    models: ModelsSource
    config: EngineConfig
    styles: list[np.ndarray]  # decoded once by the driver, at the size the runs use
    settings: RunSettings
    ext: str = ".png"
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Written into each output PNG next to the settings (the styles' names, the models).
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """One item's result: the encoded output, or the one-line error and its exit code."""

    name: str
    data: bytes | None
    error: str | None = None
    exit_code: int = 0
    evaluations: int = 0
    seconds: float = 0.0


class Worker:
    """A warm stylizer for one batch; a Ray actor class as it is (see pools.RayWorkers)."""

    def __init__(self, spec: WorkerSpec, threads: int | None = None) -> None:
        from ..runtime.stylizer import Stylizer

        self.spec = spec
        config = spec.config if threads is None else spec.config.replace(threads=threads)
        self.stylizer = Stylizer(_models_folder(spec.models), config, spec.models.fix)

    def threads(self) -> int:
        return self.stylizer.engine.threads

    def image(self, name: str, path: str | None, data: bytes | None = None) -> Outcome:
        """Stylize one image, given as a readable path or as its bytes; errors are returned,
        never raised, so one bad item does not stop the batch (Ctrl-C still stops it)."""
        try:
            x = inputs.load(Path(path) if data is None else data, [], self.spec.settings, max_pixels=self.spec.max_pixels,
                            names=None if data is None else [name], style_rgbs=self.spec.styles)
            result = self.stylizer.run(x.content, x.styles, self.spec.settings)
            if result.error:
                raise OptimizationError(result.error)
            encoded = inputs.result_bytes(result.image, self.spec.ext, x.alpha, self.spec.settings, content=name, **self.spec.meta)
            return Outcome(name, encoded, evaluations=result.evaluations, seconds=result.elapsed)
        except (OnnxStyleError, ValueError, MemoryError) as e:
            message, code = describe(e) or (str(e), 1)
            return Outcome(name, None, f"{name}: {message}" if isinstance(e, MemoryError) else message, code)

    def chunk(self, frames: np.ndarray, video: VideoSettings) -> tuple[np.ndarray, int]:
        """A run of consecutive video frames (uint8 [N,H,W,3]) stylized in order with temporal
        consistency, from the first frame's own init: (uint8 [N,H,W,3], evaluations)."""
        from ..video.temporal import stylize_frames

        given = ((i, f.astype(np.float32) / 255.0, None) for i, f in enumerate(frames))
        outs, evaluations = [], 0
        for _, out, result in stylize_frames(self.stylizer, given, self.spec.styles, self.spec.settings, video):
            outs.append(np.round(np.clip(out, 0, 1) * 255).astype(np.uint8))
            evaluations += result.evaluations
        return np.stack(outs), evaluations


def _models_folder(source: ModelsSource) -> Path:
    """The export's folder on this machine: the given one, or a copy of the blobs made once
    per machine (a folder named by the manifest's hash, which holds every file's hash, so
    the same name is the same export), shared by the actors there."""
    if source.blobs is None:
        return Path(source.folder)
    import hashlib
    import os
    import shutil

    import ray

    manifest = ray.get(source.blobs["manifest.json"])
    folder = Path(tempfile.gettempdir()) / f"onnxstyle-models-{hashlib.sha256(manifest).hexdigest()[:16]}"
    if all((folder / name).is_file() for name in source.blobs):
        return folder
    staging = Path(tempfile.mkdtemp(prefix=".onnxstyle-models-", dir=tempfile.gettempdir()))
    for name, ref in source.blobs.items():
        (staging / name).write_bytes(ray.get(ref))
    if folder.exists():  # an incomplete copy (a process killed while writing it): set aside
        trash = Path(tempfile.mkdtemp(prefix=".onnxstyle-trash-", dir=tempfile.gettempdir()))
        try:
            os.replace(folder, trash / "old")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(staging, folder)  # atomic: readers see no folder or a whole one
    except OSError:  # another actor on this machine was first
        shutil.rmtree(staging, ignore_errors=True)
    return folder
