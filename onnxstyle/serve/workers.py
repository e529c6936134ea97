"""The worker pool, server side: a bounded queue of jobs, N worker processes with warm engines,
and one supervisor thread that dispatches jobs, records progress and notices deaths.

Every change of a job goes through this class, under one lock: it is saved to the job table
(so a restart finds it) and then published (so SSE clients see it), numbered by ``seq``.
A worker that dies (killed, out of memory, a native crash) fails only its own job, with the
reason, and is replaced; the server process never runs a job itself.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import OnnxStyleError
from ..runtime.providers import physical_cores
from .settings import ServeConfig
from .store import ACTIVE, CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobRecord, JobStore
from .worker import WorkerSpec, worker_main

Publish = Callable[[JobRecord, str], None]
RATE_WINDOW = 60.0  # seconds over which evaluations per second are measured


class WorkerStartError(OnnxStyleError):
    """A worker could not build its engine; the server does not start without workers."""

    exit_code = 8


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing.Process of the spawn context
    conn: Connection
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    job: str | None = None
    cancel_deadline: float | None = None

    def send(self, message: tuple[Any, ...]) -> bool:
        with self.send_lock:
            try:
                self.conn.send(message)
                return True
            except (OSError, ValueError):  # the process died; the supervisor will notice
                return False


class WorkerPool:
    """Owns the worker processes and every job state change."""

    def __init__(self, config: ServeConfig, store: JobStore, publish: Publish, spec_template: WorkerSpec) -> None:
        self.config = config
        self.store = store
        self.publish = publish
        self.spec_template = spec_template
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._lock = threading.RLock()
        self._pending: collections.deque[str] = collections.deque()
        self._live: dict[str, JobRecord] = {}
        self._workers: list[_Worker] = []
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._respawn_at: dict[int, float] = {}
        self._failed_starts: dict[int, int] = collections.defaultdict(int)
        self.restarts = 0
        self.finished: collections.Counter[str] = collections.Counter()
        self._evaluations: collections.deque[tuple[float, int]] = collections.deque()
        self.evaluations_total = 0
        self.started_at = time.time()

    # ---- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start every worker and wait until each is warm; then take up the queued jobs."""
        cores = max(1, physical_cores())
        self.spec_template = dataclasses.replace(self.spec_template, engine=self.config.worker_engine(cores))
        deadline = time.monotonic() + self.config.start_timeout
        try:
            # One after the other: the first compiles the graphs into the backend's cache and
            # the others load them from it (OpenVINO fails when two processes write that cache).
            for i in range(self.config.workers):
                self._workers.append(self._spawn(i))
                self._await_ready(self._workers[-1], deadline)
        except BaseException:
            self._kill_all()
            raise
        for job in self.store.recover():
            self._live[job.id] = job
            self._pending.append(job.id)
        self._thread = threading.Thread(target=self._supervise, name="onnxstyle-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self, index: int) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        spec = dataclasses.replace(self.spec_template, index=index)
        process = self._ctx.Process(target=worker_main, args=(spec, child), name=f"onnxstyle-worker-{index}", daemon=True)
        process.start()
        child.close()  # only the worker holds its end: its death is an EOF here
        return _Worker(index, process, parent)

    def _await_ready(self, w: _Worker, deadline: float) -> None:
        while not w.conn.poll(max(0.0, min(0.5, deadline - time.monotonic()))):
            if not w.process.is_alive():
                raise WorkerStartError(f"worker {w.index} exited while starting (exit code {w.process.exitcode})")
            if time.monotonic() > deadline:
                raise WorkerStartError(f"worker {w.index} did not start within {self.config.start_timeout:.0f} s")
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            raise WorkerStartError(f"worker {w.index} exited while starting (exit code {w.process.exitcode})") from None
        if message[0] == "fatal":
            raise WorkerStartError(f"worker {w.index} could not start: {message[1]}")
        w.ready, w.info = True, message[1]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers; jobs they were running go back to the queue for the next start."""
        with self._lock:
            self._stopping = True
            for w in self._workers:
                w.send(("stop",))
        self._wake_w.send(None)
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.process.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            for w in self._workers:
                self._drain(w)  # a job that ended just before the stop keeps its outcome
        self._kill_all()
        with self._lock:
            for job in [j for j in self._live.values() if j.status == RUNNING]:
                fresh = dataclasses.replace(
                    job, status=QUEUED, started=None, step=0, loss=None, terms={}, elapsed=0.0, stage=1, preview_step=0
                )
                self._change(fresh, "queued")

    def _kill_all(self) -> None:
        for w in self._workers:
            if w.process.is_alive():
                w.process.kill()
            w.process.join(5)
            w.conn.close()

    # ---- requests from the web side -----------------------------------------------------
    def submit(self, record: JobRecord) -> bool:
        """Queue a new job; False when the queue is full (nothing was stored)."""
        record = dataclasses.replace(record, seq=1)  # event ids start at 1: Last-Event-ID 0 means "from the start"
        with self._lock:
            if not self.store.insert_if_room(record, self.config.queue):
                return False
            self._live[record.id] = record
            self._pending.append(record.id)
            self.publish(record, "queued")
        self._wake_w.send(None)
        return True

    def queue_full(self) -> bool:
        with self._lock:
            return sum(1 for j in self._live.values() if j.status == QUEUED) >= self.config.queue

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            live = self._live.get(job_id)
        return live if live is not None else self.store.get(job_id)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job at once, a running one through its worker; None if not active."""
        with self._lock:
            job = self._live.get(job_id)
            if job is None:
                return None
            if job.status == QUEUED:
                return self._finish(job, CANCELLED, error="cancelled before it started")
            worker = next((w for w in self._workers if w.job == job_id), None)
            if worker is not None and worker.cancel_deadline is None:
                worker.cancel_deadline = time.monotonic() + self.config.cancel_timeout
                worker.send(("cancel", job_id))
            return job

    def worker_info(self) -> dict[str, Any]:
        """What the first warm worker runs on (provider, threads), for the start-up line."""
        with self._lock:
            return next((dict(w.info) for w in self._workers if w.ready), {})

    def stats(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            while self._evaluations and self._evaluations[0][0] < now - RATE_WINDOW:
                self._evaluations.popleft()
            window = min(RATE_WINDOW, max(1e-9, now - self.started_at))
            return {
                "queued": sum(1 for j in self._live.values() if j.status == QUEUED),
                "running": sum(1 for j in self._live.values() if j.status == RUNNING),
                "finished": dict(self.finished),
                "workers": len(self._workers),
                "workers_ready": sum(1 for w in self._workers if w.ready and w.process.is_alive()),
                "restarts": self.restarts,
                "evaluations_total": self.evaluations_total,
                "evaluations_per_second": sum(n for _, n in self._evaluations) / window,
                "pids": [w.process.pid for w in self._workers if w.process.is_alive()],
            }

    # ---- job state: saved, then published ------------------------------------------------
    def _change(self, job: JobRecord, kind: str) -> JobRecord:
        job = dataclasses.replace(job, seq=job.seq + 1)
        self.store.save(job)
        if job.status in ACTIVE:
            self._live[job.id] = job
        else:
            self._live.pop(job.id, None)
        self.publish(job, kind)
        return job

    def _finish(self, job: JobRecord, status: str, **changes: Any) -> JobRecord:
        self.finished[status] += 1
        return self._change(dataclasses.replace(job, status=status, finished=time.time(), **changes), status)

    # ---- the supervisor thread -----------------------------------------------------------
    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                conns = [w.conn for w in self._workers if not w.conn.closed]
                sentinels = [w.process.sentinel for w in self._workers]
            for ready in wait([self._wake_r, *conns, *sentinels], timeout=0.5):
                if ready is self._wake_r:
                    while self._wake_r.poll():
                        self._wake_r.recv()
            with self._lock:
                if self._stopping:
                    return
                for w in list(self._workers):
                    self._drain(w)
                    if not w.process.is_alive():
                        self._replace(w)
                self._check_cancels()
                self._respawn_due()
                self._dispatch()

    def _drain(self, w: _Worker) -> None:
        try:
            while not w.conn.closed and w.conn.poll():
                self._handle(w, w.conn.recv())
        except (EOFError, OSError):
            w.conn.close()

    def _handle(self, w: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            w.ready, w.info = True, message[1]
            self._failed_starts[w.index] = 0
            return
        if kind == "fatal":
            return  # the process exits next; _replace retries with a back-off
        job = self._live.get(message[1])
        if job is None or w.job != job.id:
            return  # about a job that already ended here (cancel timed out, say)
        if kind == "progress":
            self._progress(job, message[2])
            return
        w.job, w.cancel_deadline = None, None
        if kind == "done":
            data = message[2]
            self._finish(
                job, DONE, step=data["evaluations"], loss=data["loss"], terms=data["terms"], elapsed=data["elapsed"],
                warning=data["warning"], preview_step=max(job.preview_step, data["evaluations"]),
            )
        elif kind == "failed":
            self._finish(job, FAILED, error=message[2])
        elif kind == "cancelled":
            self._finish(job, CANCELLED, error="cancelled while running")

    def _progress(self, job: JobRecord, data: dict[str, Any]) -> None:
        now = time.time()
        self._evaluations.append((now, max(0, data["step"] - job.step)))
        self.evaluations_total += max(0, data["step"] - job.step)
        job = dataclasses.replace(
            job, step=data["step"], loss=data["loss"], terms=data["terms"], elapsed=data["elapsed"],
            stage=data["stage"], stages=data["stages"], preview_step=data["step"] if data["preview"] else job.preview_step,
        )
        self._change(job, "progress")

    def _replace(self, w: _Worker) -> None:
        """A dead worker: fail its job with the reason, start another in its place."""
        code = w.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        job = self._live.get(w.job) if w.job else None
        if job is not None:
            if w.cancel_deadline is not None:
                self._finish(job, CANCELLED, error="cancelled while running (its worker was stopped)")
            else:
                self._finish(job, FAILED, error=f"the worker process died ({how}) while running this job; a new worker was started")
        if not w.conn.closed:
            w.conn.close()
        w.process.join(1)
        self._failed_starts[w.index] += 0 if w.ready else 1
        backoff = min(60.0, 2.0 ** self._failed_starts[w.index] - 1)  # a worker that cannot start is retried slower
        self._respawn_at[w.index] = time.monotonic() + backoff
        self._workers.remove(w)

    def _respawn_due(self) -> None:
        """Start one replacement at a time, once no other worker is still starting."""
        now = time.monotonic()
        if any(not w.ready for w in self._workers):
            return
        for index, at in sorted(self._respawn_at.items(), key=lambda item: item[1]):
            if at <= now:
                del self._respawn_at[index]
                self._workers.append(self._spawn(index))
                self.restarts += 1
                return

    def _check_cancels(self) -> None:
        now = time.monotonic()
        for w in self._workers:
            if w.cancel_deadline is not None and now > w.cancel_deadline and w.process.is_alive():
                w.process.kill()  # it did not stop in time; _replace marks the job cancelled

    def _dispatch(self) -> None:
        idle = [w for w in self._workers if w.ready and w.job is None and w.process.is_alive()]
        while idle and self._pending:
            job = self._live.get(self._pending.popleft())
            if job is None or job.status != QUEUED:
                continue
            w = idle.pop(0)
            task = {"id": job.id, "styles": job.styles, "settings": job.settings}
            w.job = job.id
            job = self._change(dataclasses.replace(job, status=RUNNING, started=time.time()), "running")
            if not w.send(("run", task)):
                w.job = None
                self._change(dataclasses.replace(job, status=QUEUED, started=None), "queued")
                self._pending.appendleft(job.id)
