"""``GET /metrics``: the service's state in Prometheus' text format (no client library needed
for a dozen gauges and counters)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc); None where that is not readable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _metric(lines: list[str], name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{labels} {value:.6g}" if isinstance(value, float) else f"{name}{labels} {value}")


def prometheus_text(stats: dict[str, Any], counts: dict[str, int], budget: int | None) -> str:
    """stats: WorkerPool.stats(); counts: jobs in the table by status; budget: bytes or None."""
    lines: list[str] = []
    _metric(lines, "onnxstyle_queue_depth", "gauge", "Jobs waiting for a worker.", [("", stats["queued"])])
    _metric(lines, "onnxstyle_jobs_running", "gauge", "Jobs being computed now.", [("", stats["running"])])
    _metric(
        lines, "onnxstyle_jobs", "gauge", "Jobs in the job table, by status.",
        [(f'{{status="{s}"}}', n) for s, n in sorted(counts.items())],
    )
    _metric(
        lines, "onnxstyle_jobs_finished_total", "counter", "Jobs that ended since the server started, by outcome.",
        [(f'{{status="{s}"}}', int(stats["finished"].get(s, 0))) for s in ("done", "failed", "cancelled")],
    )
    _metric(lines, "onnxstyle_evaluations_total", "counter", "Gradient evaluations since start.", [("", stats["evaluations_total"])])
    _metric(
        lines, "onnxstyle_evaluations_per_second", "gauge", "Gradient evaluations per second over the last minute.",
        [("", float(stats["evaluations_per_second"]))],
    )
    _metric(lines, "onnxstyle_workers", "gauge", "Worker processes warm and ready.", [("", stats["workers_ready"])])
    _metric(lines, "onnxstyle_worker_restarts_total", "counter", "Workers replaced after dying.", [("", stats["restarts"])])
    rss = [("{process=\"server\"}", rss_bytes(os.getpid()))] + [("{process=\"workers\"}", _sum(rss_bytes(p) for p in stats["pids"]))]
    _metric(lines, "onnxstyle_resident_bytes", "gauge", "Resident memory of the server and of its workers.", [(k, v or 0) for k, v in rss])
    if budget is not None:
        _metric(lines, "onnxstyle_memory_budget_bytes", "gauge", "What the server and its workers may use in all.", [("", budget)])
    return "\n".join(lines) + "\n"


def _sum(values: Any) -> int:
    return sum(v for v in values if v is not None)
