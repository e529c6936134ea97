"""One worker process: builds a Stylizer once, keeps it warm, runs one job at a time.

It talks to the server over its own pipe (no lock shared with other processes, so a worker
killed mid-message cannot wedge the others). The server sends ``("run", task)``,
``("cancel", job_id)`` and ``("stop",)``; the worker answers ``("ready", info)`` or
``("fatal", message)`` once, then per job ``("progress", id, data)`` for every evaluation and
one of ``("done", id, data)``, ``("failed", id, message)``, ``("cancelled", id)``.

This module imports neither FastAPI nor anything of the web stack: a worker holds an engine
and numpy, nothing else.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Interrupted, describe
from ..runtime import inputs
from ..runtime.image_io import encode_image, from_nchw, resize_to, write_atomic
from ..runtime.settings import EngineConfig, RunSettings
from .store import PREVIEW, RESULT, input_names, load_array

if TYPE_CHECKING:  # the server imports this module: it must not load scipy for nothing
    from ..runtime.optimize import Iterate, Result

PREVIEW_SIDE = 512  # previews are for watching: never more than this, whatever the size


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to start (pickled to the spawned process)."""

    index: int
    models: Path
    fix: str
    engine: EngineConfig
    jobs_dir: Path
    preview_every: int
    # (text, replacement) pairs: server paths are taken out of every message sent back.
    scrub: tuple[tuple[str, str], ...] = ()


class Cancelled(KeyboardInterrupt):
    """The server cancelled the running job (raised in the progress callback)."""


class Stopping(KeyboardInterrupt):
    """The server is shutting down, or went away: stop the job and leave."""


def scrub(message: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """``message`` without the server's paths (longest first, so a folder's child goes first)."""
    for text, replacement in sorted(pairs, key=lambda p: -len(p[0])):
        if text:
            message = message.replace(text, replacement)
    return message


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of the spawned process."""
    # Ctrl-C in a terminal, and systemd's stop, signal every process of the group at once;
    # the server alone decides when workers stop (after it has put their jobs back in the
    # queue), by a message or by going away: the pipe then ends and the worker with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _serve_jobs(spec, conn)
    except (EOFError, OSError):  # the server is gone: nobody is left to work for
        return


def _serve_jobs(spec: WorkerSpec, conn: Connection) -> None:
    from ..runtime.stylizer import Stylizer

    try:
        stylizer = Stylizer(spec.models, spec.engine, spec.fix)
        _warm_up(stylizer)
    except Exception as e:  # reported to the server, which refuses to start with it
        conn.send(("fatal", scrub(_describe(e), spec.scrub)))
        return
    choice = stylizer.engine.choice  # the server sizes its memory admission for this backend
    info = {
        "pid": os.getpid(), "provider": stylizer.engine.provider, "threads": stylizer.engine.threads,
        "backend": choice.backend, "precision": choice.precision,
    }
    conn.send(("ready", info))
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        if message[0] == "run" and not _run_job(stylizer, spec, conn, message[1]):
            return
        # ("cancel", id) for a job that already ended: nothing to do.


def _warm_up(stylizer: Any) -> None:
    """One tiny run builds both sessions, so the first job does not pay for it."""
    ramp = np.linspace(0.0, 1.0, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
    stylizer.run(ramp, [ramp[::-1].copy()], RunSettings(size=32, iterations=1, shape_grid=True))  # as the jobs run: the features graph dynamic


def _describe(e: BaseException) -> str:
    known = describe(e)
    return known[0] if known else f"internal error ({type(e).__name__}: {e})"


def _control(conn: Connection, job_id: str) -> None:
    """Read what the server sent during a run: a cancel of this job or a stop raise."""
    try:
        while conn.poll():
            message = conn.recv()
            if message[0] == "stop":
                raise Stopping()
            if message[0] == "cancel" and message[1] == job_id:
                raise Cancelled()
    except (EOFError, OSError):
        raise Stopping() from None


def _run_job(stylizer: Any, spec: WorkerSpec, conn: Connection, task: dict[str, Any]) -> bool:
    """Run one job and report how it ended; False when the worker must exit."""
    job_id = task["id"]
    folder = spec.jobs_dir / job_id
    try:
        settings = RunSettings.from_dict(task["settings"])
        names = input_names(task["styles"])
        content = load_array(folder / names[0])
        styles = [load_array(folder / n) for n in names[1:]]
        alpha = load_array(folder / "alpha.npy") if (folder / "alpha.npy").is_file() else None

        def callback(it: Iterate) -> None:
            _control(conn, job_id)
            preview = it.step % spec.preview_every == 0 or it.step == it.total
            if preview:
                write_atomic(folder / PREVIEW, _preview_jpeg(it.image))
            conn.send(("progress", job_id, _progress(it, preview)))

        result = stylizer.run(content, styles, settings, callback)
        write_atomic(folder / RESULT, _result_png(result, settings, alpha, job_id, stylizer.engine.provider))
        write_atomic(folder / PREVIEW, _preview_jpeg(result.image))
        conn.send(("done", job_id, _summary(result)))
        return True
    except Interrupted as e:
        if isinstance(e.cause, Cancelled):
            conn.send(("cancelled", job_id))
            return True
        return False  # stopping: the server re-queues the job itself
    except Exception as e:  # the job fails; the worker and its warm engine carry on
        try:
            conn.send(("failed", job_id, scrub(_describe(e), spec.scrub)))
        except (OSError, ValueError):
            return False
        return True


def _progress(it: Iterate, preview: bool) -> dict[str, Any]:
    return {
        "step": it.step, "total": it.total, "loss": it.loss, "terms": it.terms, "elapsed": it.elapsed,
        "stage": it.stage, "stages": it.stages, "preview": preview,
    }


def _summary(result: Result) -> dict[str, Any]:
    return {
        "evaluations": result.evaluations, "loss": result.loss, "terms": result.terms, "elapsed": result.elapsed,
        "warning": None if result.error is None else f"{result.error}; the best image is kept",
    }


def _preview_jpeg(image: np.ndarray) -> bytes:
    rgb = from_nchw(image)
    h, w = rgb.shape[:2]
    if max(h, w) > PREVIEW_SIDE:
        scale = PREVIEW_SIDE / max(h, w)
        rgb = resize_to(rgb, max(1, round(h * scale)), max(1, round(w * scale)))
    return encode_image(np.clip(rgb, 0.0, 1.0), ".jpg")


def _result_png(result: Result, settings: RunSettings, alpha: np.ndarray | None, job_id: str, provider: str) -> bytes:
    """The final PNG; nothing in its metadata is a path."""
    return inputs.result_bytes(
        result.image, ".png", alpha, settings, job=job_id, evaluations=result.evaluations, loss=result.loss, terms=result.terms,
        elapsed=round(result.elapsed, 3), device=provider, error=result.error,
    )
