"""The service's configuration: one frozen dataclass, every default with the reason for it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.settings import EngineConfig

MB = 2**20
TOKEN_ENV = "ONNXSTYLE_TOKEN"
DATA_ENV = "ONNXSTYLE_DATA"
# What the idle server process itself may take (FastAPI, uvicorn, numpy, opencv); the
# workers' shares of the memory budget are what is left after it (benchmarks/serve.py).
SERVER_RESERVE_BYTES = 150 * MB


def default_data_dir() -> Path:
    """$ONNXSTYLE_DATA, else the platform's user data folder (platformdirs: on Linux
    $XDG_DATA_HOME/onnxstyle/serve, else ~/.local/share/onnxstyle/serve)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("onnxstyle", appauthor=False)) / "serve"


@dataclass(frozen=True)
class ServeConfig:
    """How one ``onnxstyle serve`` runs; fixed for the server's lifetime."""

    # The export the workers run (found or made by resolve_models before the server starts),
    # and the command that re-creates it, for error messages about it.
    models: Path
    fix: str = "onnxstyle export"
    # Loopback only: exposing the service is a deliberate act (--host 0.0.0.0 behind a proxy).
    host: str = "127.0.0.1"
    port: int = 8000
    # Worker processes, each with its own warm engine (0.4-0.7 GB) using its share of the
    # cores. One is right on a small box: two workers on two cores finish two jobs in about
    # the time one worker finishes them one after the other, with twice the memory.
    workers: int = 1
    # Jobs waiting beyond the running ones. A bound, so a burst is told 429 at once instead
    # of being accepted into hours of waiting; 8 jobs at 512 px are about an hour on 2 cores.
    queue: int = 8
    # The job table and each job's inputs, preview and result; None: default_data_dir().
    data: Path | None = None
    # Bearer token for /v1 and /metrics; None: no authentication (fine on loopback only).
    token: str | None = None
    # A camera JPEG is under 20 MB; a larger request is refused before its body is read.
    max_upload_mb: float = 20.0
    # Longest side of an output: 1024 px is about ten minutes of work on two cores.
    max_size: int = 1024
    # Decompression bombs: Pillow's convention of a pixel limit, checked from the header.
    # Lower than the CLI's (DEFAULT_MAX_PIXELS, 179 M): the server decodes uploads in its own
    # process, and a 50 M pixel photo (any camera's) is 150 MB while it is decoded.
    max_pixels: int = 50_000_000
    # Style images per job: each adds a Gram target and its decode.
    max_styles: int = 4
    # Evaluations per job over all stages: bounds one job's time (1000 is 3x the default).
    max_evaluations: int = 1000
    # None: the memory available at start, less the margin below. A job is admitted only if
    # its estimated peak (estimate_run_bytes) fits one worker's share of this budget.
    memory_budget_mb: int | None = None
    # Left to the OS, the page cache and other programs on the box.
    memory_margin_mb: int = 512
    # The engine every worker builds (its threads: the physical cores shared among workers).
    engine: EngineConfig = field(default_factory=EngineConfig)
    # A preview JPEG every N evaluations: 1-2% of an evaluation's time at 256 px.
    preview_every: int = 5
    # A worker that has not stopped this many seconds after a cancel is killed and replaced.
    cancel_timeout: float = 10.0
    # Origins allowed by CORS; empty: CORS off (the page is served from the same origin).
    cors_origins: tuple[str, ...] = ()
    # Progress events kept per job for Last-Event-ID replays (one per evaluation).
    event_history: int = 2000
    # Seconds a whole request body may take to arrive (a 20 MB upload at 1 Mbit/s is under
    # three minutes); then 408. A client trickling or stalled would hold its connection forever.
    body_timeout: float = 300.0
    # Seconds a worker may take to start and warm up before the server gives up on it.
    start_timeout: float = 180.0

    def __post_init__(self) -> None:
        checks = [
            (self.workers >= 1, "workers must be 1 or more"),
            (self.queue >= 0, "queue must be 0 or more"),
            (1 <= self.port <= 65535, f"port {self.port}: must be 1-65535"),
            (self.max_upload_mb > 0, "max-upload must be more than 0 MB"),
            (self.max_size >= 32, f"max-size {self.max_size}: must be at least 32 px"),
            (self.max_pixels >= 1, "max-pixels must be 1 or more"),
            (self.max_styles >= 1, "max-styles must be 1 or more"),
            (self.max_evaluations >= 1, "max-evaluations must be 1 or more"),
            (self.memory_budget_mb is None or self.memory_budget_mb > 0, "memory-budget must be more than 0 MB"),
            (self.memory_margin_mb >= 0, "memory-margin must be 0 MB or more"),
            (self.preview_every >= 1, "preview-every must be 1 or more"),
            (self.body_timeout > 0, "body-timeout must be more than 0 s"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.token is not None and not self.token.strip():
            raise ValueError("the token is empty; give a non-empty --token or unset ONNXSTYLE_TOKEN")

    def replace(self, **changes: Any) -> ServeConfig:
        return dataclasses.replace(self, **changes)

    @property
    def data_dir(self) -> Path:
        return self.data if self.data is not None else default_data_dir()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    def worker_engine(self, cores: int) -> EngineConfig:
        """Each worker's engine: unless threads were given, the cores divided among workers
        (oversubscribed threads make every job slower, not more jobs faster)."""
        if self.engine.threads is not None:
            return self.engine
        return self.engine.replace(threads=max(1, cores // self.workers))

    def memory_budget(self, available: int | None) -> int | None:
        """Bytes the server and its workers may use in all; None when nothing is known."""
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb * MB
        if available is None:
            return None
        return max(0, available - self.memory_margin_mb * MB)

    def worker_share(self, budget: int | None) -> int | None:
        """What one running job may take: the budget less the server's own, split evenly."""
        if budget is None:
            return None
        return max(0, budget - SERVER_RESERVE_BYTES) // self.workers
