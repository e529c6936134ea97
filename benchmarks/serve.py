"""The service's two targets, measured on the real `onnxstyle serve` over loopback HTTP.

1. Overhead per job against the CLI at 256 px (target: at most 5% on wall time). The same
   job (Tübingen × The Starry Night, same size, evaluations, device and thread count) runs
   as ``onnxstyle stylize`` (a process per image: start-up, engine, job, PNG) and through the
   service (POST, events until the end, GET of the PNG: the wall time a client sees), the two
   interleaved so that load drifts touch both alike. Also reported: the time a job spends
   outside the optimizer (upload and decode, style targets, PNG, HTTP: wall minus the
   optimizer's own time).
2. Memory: the idle server's RSS (target: at most 150 MB, plus the workers' warm engines,
   reported apart), and RSS after each of 50 sequential jobs (target: no growth from the
   10th job to the last, where caches have filled: at most 2% or 5 MB, whichever is larger).

    python benchmarks/serve.py                        # the real run (about 10 minutes on 2 cores)
    python benchmarks/serve.py --quick --out /tmp/s   # smoke run; its figures mean nothing

Writes <out>/serve.json and <out>/serve.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxstyle.autoexport import resolve_models  # noqa: E402
from onnxstyle.runtime.providers import cpu_model, physical_cores  # noqa: E402
from onnxstyle.exportdir import export_settings_for# noqa: E402

DATA = ROOT / "onnxstyle" / "data"
TARGETS = {"overhead": 0.05, "idle_server_mb": 150.0, "growth_fraction": 0.02, "growth_floor_mb": 5.0}
MB = 2**20
CLI = [sys.executable, "-m", "onnxstyle.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


class Service:
    """`onnxstyle serve` in a subprocess, with one worker (as the CLI: one engine, all cores)."""

    def __init__(self, models: Path, data: Path, device: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / "serve.log"
        cmd = [*CLI, "serve", "--models", str(models), "--data", str(data), "--port", str(self.port), "--device", device, "-q"]
        t0 = time.perf_counter()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=600)
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.startup = time.perf_counter() - t0

    def workers(self) -> list[int]:
        kids = psutil.Process(self.process.pid).children()
        return [p.pid for p in kids if "spawn_main" in " ".join(p.cmdline())]

    def memory(self) -> dict[str, float]:
        return {"server_mb": rss(self.process.pid) / MB, "workers_mb": sum(rss(p) for p in self.workers()) / MB}

    def job(self, content: Path, style: Path, settings: dict[str, Any]) -> dict[str, Any]:
        """One job as a client sees it: from the POST to the last byte of the PNG."""
        t0 = time.perf_counter()
        files = [("content", (content.name, content.read_bytes())), ("style", (style.name, style.read_bytes()))]
        r = self.client.post("/v1/jobs", files=files, data={"settings": json.dumps(settings)})
        r.raise_for_status()
        job_id = r.json()["id"]
        with self.client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
            for line in events.iter_lines():
                if line.startswith("event: ") and line[7:] in ("done", "failed", "cancelled"):
                    break
        png = self.client.get(f"/v1/jobs/{job_id}/result")
        wall = time.perf_counter() - t0
        job = self.client.get(f"/v1/jobs/{job_id}").json()
        if png.status_code != 200 or job["status"] != "done":
            raise SystemExit(f"job {job_id} ended {job['status']}: {job.get('error')}")
        return {"wall": wall, "compute": job["elapsed"], "wait": job["wait"], "bytes": len(png.content)}

    def stop(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(60)


def cli_job(models: Path, content: Path, style: Path, out: Path, size: int, iterations: int, device: str) -> float:
    cmd = [*CLI, "stylize", str(content), str(style), "-o", str(out), "--size", str(size), "--iterations", str(iterations),
           "--models", str(models), "--device", device, "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def overhead(service: Service, args: argparse.Namespace, models: Path, tmp: Path) -> dict[str, Any]:
    content, style = DATA / "tubingen.jpg", DATA / "starry_night.jpg"
    settings = {"size": args.size, "iterations": args.iterations}
    cli, served = [], []
    for i in range(args.repeats):  # interleaved: a change in load touches both sides
        cli.append(cli_job(models, content, style, tmp / f"cli{i}.png", args.size, args.iterations, args.device))
        served.append(service.job(content, style, settings))
        print(f"  repeat {i + 1}: CLI {cli[-1]:.2f} s, service {served[-1]['wall']:.2f} s", file=sys.stderr, flush=True)
    cli_median = statistics.median(cli)
    wall_median = statistics.median(j["wall"] for j in served)
    return {
        "cli_seconds": cli, "service": served, "cli_median": cli_median, "service_median": wall_median,
        "overhead": wall_median / cli_median - 1.0,
        "beyond_compute_median": statistics.median(j["wall"] - j["compute"] for j in served),
    }


def memory_run(service: Service, args: argparse.Namespace) -> dict[str, Any]:
    content, style = DATA / "tubingen.jpg", DATA / "starry_night.jpg"
    settings = {"size": args.rss_size, "iterations": args.rss_iterations}
    samples = []
    for i in range(args.jobs):
        service.job(content, style, settings)
        samples.append(service.memory())
        if (i + 1) % 10 == 0:
            print(f"  {i + 1} jobs: {samples[-1]}", file=sys.stderr, flush=True)
    base = samples[min(9, len(samples) - 1)]  # after the 10th job: arenas and bounded caches have filled
    last = samples[-1]
    growth = {k: last[k] - base[k] for k in base}
    allowed = {k: max(TARGETS["growth_fraction"] * base[k], TARGETS["growth_floor_mb"]) for k in base}
    return {"samples": samples, "growth_mb": growth, "allowed_mb": allowed, "grows": any(growth[k] > allowed[k] for k in growth)}


def markdown(report: dict[str, Any]) -> str:
    o, m, idle = report["overhead"], report["memory"], report["idle"]
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    lines = [
        "# onnxstyle serve: overhead and memory",
        "",
        f"Machine: {report['machine']}, {report['cores']} physical cores; device {report['device']}; {report['date']}; "
        f"load average {report['load_average']:.1f} at the start, {report['load_average_end']:.1f} at the end.",
        f"Command: `{report['command']}`",
        "",
        "| figure | measured | target |",
        "| --- | --- | --- |",
        f"| CLI `stylize`, {report['size']} px, {report['iterations']} evaluations (median of {len(o['cli_seconds'])}) | "
        f"{o['cli_median']:.2f} s | |",
        f"| the same job through the service, POST to PNG (median) | {o['service_median']:.2f} s | |",
        f"| overhead against the CLI | {100 * o['overhead']:+.1f}% | ≤ +5%: {verdict(o['overhead'] <= TARGETS['overhead'])} |",
        f"| time outside the optimizer: upload, targets, PNG, HTTP (median) | {1000 * o['beyond_compute_median']:.0f} ms | |",
        f"| idle server RSS (after start) | {idle['server_mb']:.0f} MB | ≤ 150 MB: {verdict(idle['server_mb'] <= TARGETS['idle_server_mb'])} |",
        f"| warm worker RSS (1 worker, after start) | {idle['workers_mb']:.0f} MB | (reported apart) |",
        f"| server start until it answers (workers warm) | {report['startup']:.1f} s | |",
    ]
    for k, name in (("server_mb", "server"), ("workers_mb", "worker")):
        first, last = m["samples"][0][k], m["samples"][-1][k]
        ok = m["growth_mb"][k] <= m["allowed_mb"][k]
        lines.append(
            f"| {name} RSS over {len(m['samples'])} sequential jobs ({report['rss_size']} px, {report['rss_iterations']} "
            f"evaluations): after job 1 / 10 / {len(m['samples'])} | {first:.0f} / {m['samples'][min(9, len(m['samples']) - 1)][k]:.0f} / "
            f"{last:.0f} MB | growth from job 10 ≤ {m['allowed_mb'][k]:.1f} MB: {verdict(ok)} |"
        )
    lines += ["", "Overhead: the service's median wall time over the CLI's, minus 1 (negative: the service is faster, "
              "its engine being warm while the CLI starts a process and builds one per image)."]
    if report.get("quick"):
        lines += ["", "**Smoke run (--quick): these figures mean nothing.**"]
    if max(report["load_average"], report["load_average_end"]) > report["cores"] / 2:
        lines += ["", "**Other work shared the cores during the run (load average above half the cores): timings are unreliable.**"]
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="overhead: longest side")
    p.add_argument("--iterations", type=int, default=100, help="overhead: evaluations per job")
    p.add_argument("--repeats", type=int, default=3, help="overhead: jobs on each side")
    p.add_argument("--jobs", type=int, default=50, help="memory: sequential jobs")
    p.add_argument("--rss-size", type=int, default=128)
    p.add_argument("--rss-iterations", type=int, default=20)
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, 5 evaluations, 1 repeat, 12 small jobs")
    a = p.parse_args()
    if a.quick:
        a.size, a.iterations, a.repeats, a.jobs, a.rss_size, a.rss_iterations = 64, 5, 1, 12, 32, 2
    return a


def main() -> None:
    args = parse()
    models = resolve_models(export_settings_for("gatys"), args.models, log=lambda s: print(s, file=sys.stderr)).folder
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="onnxstyle-serve-bench-") as tmp:
        service = Service(models, Path(tmp) / "data", args.device)
        try:
            time.sleep(2.0)  # let start-up allocations settle before the idle figure
            idle = service.memory()
            print(f"started in {service.startup:.1f} s; idle {idle}", file=sys.stderr, flush=True)
            over = overhead(service, args, models, Path(tmp))
            memory = memory_run(service, args)
        finally:
            code = service.stop()
    report = {
        "machine": cpu_model(), "cores": physical_cores(), "device": args.device, "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "load_average": load_start, "load_average_end": os.getloadavg()[0], "quick": args.quick,
        "command": "python benchmarks/serve.py" + (" --quick" if args.quick else ""), "size": args.size, "iterations": args.iterations,
        "rss_size": args.rss_size, "rss_iterations": args.rss_iterations, "startup": service.startup, "idle": idle,
        "overhead": over, "memory": memory, "server_exit_code": code, "targets": TARGETS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / "serve.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
