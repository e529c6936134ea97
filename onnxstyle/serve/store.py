"""The job table (SQLite, under the data folder) and each job's folder beside it.

A job's folder holds its decoded inputs (``.npy``: the worker never decodes an upload), the
latest preview and the result, each written atomically (temp file, fsync, rename), so a
crash leaves the old file or the new one, never half of one. Folder names are the job's
random UUID in its canonical form: no text from a request ever becomes part of a path.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from ..errors import OnnxStyleError
from ..runtime.image_io import write_atomic

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)
STATUSES = ACTIVE + FINISHED

PREVIEW = "preview.jpg"
RESULT = "result.png"
SCHEMA_VERSION = 1

_COLUMNS = (
    "id", "status", "created", "iterations", "width", "height", "styles", "settings", "estimate", "started",
    "finished", "step", "loss", "terms", "elapsed", "stage", "stages", "error", "warning", "preview_step", "seq",
)
_JSON_COLUMNS = ("settings", "terms")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, iterations INTEGER NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, styles INTEGER NOT NULL, settings TEXT NOT NULL,
    estimate INTEGER NOT NULL, started REAL, finished REAL, step INTEGER NOT NULL, loss REAL,
    terms TEXT NOT NULL, elapsed REAL NOT NULL, stage INTEGER NOT NULL, stages INTEGER NOT NULL,
    error TEXT, warning TEXT, preview_step INTEGER NOT NULL, seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
PRAGMA user_version = {SCHEMA_VERSION};
"""


def new_job_id() -> str:
    """A random UUID (122 random bits): unguessable, and safe as a folder name."""
    return str(uuid.uuid4())


def parse_job_id(text: str) -> str | None:
    """The canonical form of a job id from a URL, or None if it is not a UUID at all."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


@dataclass(frozen=True)
class JobRecord:
    """One row of the job table; changes make a new record (``dataclasses.replace``)."""

    id: str
    status: str
    created: float
    iterations: int  # evaluations planned, over all stages
    width: int  # of the result
    height: int
    styles: int
    settings: dict[str, Any]  # the run settings, as JSON (no paths: the worker rebuilds them)
    estimate: int  # bytes, estimate_run_bytes when it was admitted
    started: float | None = None
    finished: float | None = None
    step: int = 0
    loss: float | None = None
    terms: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0  # seconds of computing
    stage: int = 1
    stages: int = 1
    error: str | None = None
    warning: str | None = None  # done, but stopped early by numerical faults (best image kept)
    preview_step: int = 0  # the step of the latest preview written; 0: none yet
    seq: int = 0  # number of the latest event about this job (SSE ids)

    def eta(self) -> float | None:
        if self.status != RUNNING or self.step <= 0:
            return None
        return self.elapsed / self.step * max(0, self.iterations - self.step)

    def public(self) -> dict[str, Any]:
        """The job as the API shows it: no server path, no internal field."""
        base = f"/v1/jobs/{self.id}"
        view: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "step": self.step,
            "iterations": self.iterations,
            "loss": _finite(self.loss),
            "terms": {k: _finite(v) for k, v in self.terms.items()},
            "stage": self.stage,
            "stages": self.stages,
            "elapsed": round(self.elapsed, 3),
            "eta": None if (eta := self.eta()) is None else round(eta, 1),
            "width": self.width,
            "height": self.height,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "wait": None if self.started is None else round(self.started - self.created, 3),
            "settings": self.settings,
            "preview": f"{base}/preview?step={self.preview_step}" if self.preview_step else None,
            "result": f"{base}/result" if self.status == DONE else None,
        }
        if self.error is not None:
            view["error"] = self.error
        if self.warning is not None:
            view["warning"] = self.warning
        return view


def _finite(value: float | None) -> float | None:
    """JSON has no inf nor NaN (a diverging run's loss): null instead of a body no parser reads."""
    return value if value is None or math.isfinite(value) else None


class JobStore:
    """SQLite in WAL mode: readers never wait for the writer, and a commit survives a
    ``kill -9`` of the server (synchronous=NORMAL risks only the last commits on power loss)."""

    def __init__(self, data: Path) -> None:
        self.data = Path(data)
        self.jobs_dir = self.data / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._owner = _lock_folder(self.data)
        self._lock = threading.Lock()
        # One connection shared by the event loop and the supervisor thread, under a lock:
        # each statement takes well under a millisecond.
        self._db = sqlite3.connect(self.data / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._owner.release()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def job_dir(self, job_id: str) -> Path:
        canonical = parse_job_id(job_id)
        if canonical is None or canonical != job_id:  # a path is only ever made of a canonical UUID
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs_dir / canonical

    def save(self, record: JobRecord) -> None:
        with self._transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", _row(record))

    def insert_if_room(self, record: JobRecord, queue_limit: int) -> bool:
        """Insert a queued job unless ``queue_limit`` jobs already wait (one transaction, so
        two requests can never both take the last place)."""
        with self._transaction() as db:
            (waiting,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()
            if waiting >= queue_limit:
                return False
            db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", _row(record))
            return True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def with_status(self, *statuses: str) -> list[JobRecord]:
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status IN ({marks}) ORDER BY created", statuses).fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        found = dict(rows)
        return {s: int(found.get(s, 0)) for s in STATUSES}

    def delete(self, job_id: str) -> None:
        """Forget a finished job and remove its folder."""
        folder = self.job_dir(job_id)
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        # Two DELETEs of one job may run at once (in the threadpool): whatever the other
        # removed first is not an error.
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            path.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass

    def recover(self) -> list[JobRecord]:
        """After a restart: jobs that were running are failed with the reason (re-running a
        job that may have crashed the server could crash it again), unless their result was
        written before the crash; queued jobs stay queued. Returns the queued jobs, oldest first."""
        now = time.time()
        for job in self.with_status(RUNNING):
            if (self.job_dir(job.id) / RESULT).is_file():
                self.save(dataclasses.replace(job, status=DONE, finished=now, step=job.iterations, seq=job.seq + 1))
                continue
            reason = "the server stopped while this job was running (crash or kill); submit it again"
            self.save(dataclasses.replace(job, status=FAILED, finished=now, error=reason, seq=job.seq + 1))
        ready = []
        for job in self.with_status(QUEUED):
            if self.inputs_present(job):
                ready.append(job)
            else:
                self.save(dataclasses.replace(job, status=FAILED, finished=now, error="its inputs were lost before it ran", seq=job.seq + 1))
        return ready

    def inputs_present(self, job: JobRecord) -> bool:
        folder = self.job_dir(job.id)
        return all((folder / name).is_file() for name in input_names(job.styles))


def _lock_folder(data: Path) -> FileLock:
    """One server per data folder: two would run the same queued jobs. The kernel drops the
    lock (flock) when the process ends, however it ends, so a restart after kill -9 is not
    refused. Not thread-local: the store may be closed from another thread than opened it."""
    lock = FileLock(data / "serve.lock", timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise OnnxStyleError(f"{data} is in use by another onnxstyle serve; give this one its own --data") from None
    return lock


def input_names(styles: int) -> list[str]:
    return ["content.npy", *[f"style-{i}.npy" for i in range(styles)]]


def save_array(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    write_atomic(path, buf.getvalue())


def load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _row(r: JobRecord) -> tuple[Any, ...]:
    return tuple(json.dumps(getattr(r, c)) if c in _JSON_COLUMNS else getattr(r, c) for c in _COLUMNS)


def _record(row: tuple[Any, ...]) -> JobRecord:
    values = {c: (json.loads(v) if c in _JSON_COLUMNS else v) for c, v in zip(_COLUMNS, row)}
    return JobRecord(**values)
