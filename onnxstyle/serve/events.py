"""Progress fanned out to Server-Sent Events clients, with replay for Last-Event-ID.

The pool publishes every change of a job from its supervisor thread; the hub lives on the
event loop (changes cross over with ``call_soon_threadsafe``), keeps each job's recent
events numbered by the job's ``seq``, and wakes the streams waiting on that job.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .store import FINISHED, JobRecord

KEEPALIVE = 15.0  # seconds: a comment line keeps proxies from closing an idle stream
FINISHED_KEPT = 16  # finished jobs whose event history stays in memory (a reconnect comes soon after the end)
RETRY_MS = 2000  # what EventSource waits before reconnecting


@dataclass
class _JobEvents:
    events: collections.deque[tuple[int, str, dict[str, Any]]]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    final: tuple[int, str, dict[str, Any]] | None = None


def event_data(job: JobRecord, kind: str) -> dict[str, Any]:
    """What one event carries: progress fields for a step, the whole job once it ends."""
    view = job.public()
    if kind in FINISHED:
        return view
    keys = ("id", "status", "step", "iterations", "loss", "terms", "elapsed", "eta", "stage", "stages", "preview")
    return {k: view[k] for k in keys}


def encode(seq: int, kind: str, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventHub:
    def __init__(self, history: int) -> None:
        self.history = history
        self._jobs: dict[str, _JobEvents] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish_threadsafe(self, job: JobRecord, kind: str) -> None:
        """Called by the pool from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.publish, job, kind)
        except RuntimeError:  # the loop closed in between: nobody is listening any more
            pass

    def publish(self, job: JobRecord, kind: str) -> None:
        entry = self._entry(job.id)
        event = (job.seq, kind, event_data(job, kind))
        entry.events.append(event)
        if kind in FINISHED:
            entry.final = event
            self._finished.append(job.id)
            while len(self._finished) > FINISHED_KEPT:
                self._jobs.pop(self._finished.popleft(), None)
        entry.changed.set()
        entry.changed = asyncio.Event()

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def close(self) -> None:
        """Server shutdown: every stream ends, so uvicorn is not kept waiting for them."""
        self.closing = True
        for entry in self._jobs.values():
            entry.changed.set()

    def close_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.close)

    def _entry(self, job_id: str) -> _JobEvents:
        entry = self._jobs.get(job_id)
        if entry is None:
            entry = self._jobs[job_id] = _JobEvents(collections.deque(maxlen=self.history))
        return entry

    async def stream(self, current: Callable[[], JobRecord | None], job_id: str, last_id: int) -> AsyncIterator[bytes]:
        """Events after ``last_id``, then each new one, until the job ends (or the server does)."""
        yield f"retry: {RETRY_MS}\n\n".encode()
        job = current()
        if job is None:
            return
        entry = self._jobs.get(job_id)
        if entry is None:
            if job.status in FINISHED:  # long over: its outcome is all there is to send
                yield encode(job.seq, job.status, event_data(job, job.status))
                return
            entry = self._entry(job_id)
        while not self.closing:
            waiter = entry.changed
            newer = [e for e in entry.events if e[0] > last_id]
            if not newer:
                # Not in memory (a restart, or older than the history kept): the job as it is now.
                job = current()
                if job is not None and (job.seq > last_id or job.status in FINISHED):
                    newer = [(job.seq, job.status if job.status in FINISHED else "progress", event_data(job, job.status))]
            for seq, kind, data in newer:
                yield encode(seq, kind, data)
                last_id = max(last_id, seq)
                if kind in FINISHED:
                    return
            try:
                await asyncio.wait_for(waiter.wait(), KEEPALIVE)
            except asyncio.TimeoutError:
                yield b": keep-alive\n\n"
