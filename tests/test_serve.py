"""`onnxstyle serve` end to end: the real command in a subprocess on loopback, talked to over
HTTP. Results are checked against `onnxstyle stylize` (same backend, same threads), events
parsed off the wire, crashes made with real signals."""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from helpers import DATA, cli_env
from serve_helpers import (
    CONTENT,
    STYLE,
    Server,
    files,
    no_server_paths,
    png_header_only,
    free_port,
    read_events,
    serve_command,
    start_server,
    submit,
    wait_gone,
    wait_status,
    wait_step,
)

TOKEN = "test-token-0123456789"
BUDGET_MB = 3000  # two warm workers (~0.65 GB each with OpenVINO) and the server fit
QUEUE = 3
LONG = {"size": 64, "iterations": 1000}  # minutes of work: only ever cancelled or killed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(caffe_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("serve") / "data"
    args = ["--workers", "2", "--threads", "1", "--queue", str(QUEUE), "--memory-budget", str(BUDGET_MB), "--max-upload", "1"]
    srv = start_server(caffe_export, data, *args, token=TOKEN)
    yield srv
    workers = [p.pid for p in srv.workers()]
    assert srv.stop() == 0, srv.log_text()  # Ctrl-C: a clean exit
    assert not wait_gone(workers, 10), "workers outlived the server"
    assert "Traceback" not in srv.log_text(), srv.log_text()


def _cli_reference(models: Path, out: Path, size: int, iterations: int) -> np.ndarray:
    """The same job through `onnxstyle stylize` (same decode, backend and thread count)."""
    cmd = [sys.executable, "-m", "onnxstyle.cli", "stylize", str(CONTENT), str(STYLE), "-o", str(out), "--models", str(models),
           "--size", str(size), "--iterations", str(iterations), "--threads", "1", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    return cv2.imread(str(out), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float64)


def test_a_job_computes_what_the_cli_computes(server: Server, caffe_export: Path) -> None:
    with server.client() as c:
        r = submit(c, {"size": 48, "iterations": 10})
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert uuid.UUID(job["id"]).version == 4
        assert (job["status"], job["iterations"], job["width"], job["height"]) == ("queued", 10, 48, 36)
        done = wait_status(c, job["id"], ("done", "failed"))
        assert done["status"] == "done", done
        assert done["step"] == 10 and done["loss"] > 0 and done["wait"] is not None
        png = c.get(done["result"])
        preview = c.get(f"/v1/jobs/{job['id']}/preview")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    got = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float64)
    ref = _cli_reference(caffe_export, server.data.parent / "cli.png", 48, 10)
    content = np.round(cv2.resize(cv2.imread(str(CONTENT)), (48, 36), interpolation=cv2.INTER_AREA)[:, :, ::-1])
    assert got.shape == ref.shape == (36, 48, 3)
    assert np.abs(got - ref).mean() < 1.0, "the service's image differs from the CLI's"
    assert np.abs(got - content).mean() > 5.0, "the image was not stylized"
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(preview.content, np.uint8), cv2.IMREAD_COLOR).shape == (36, 48, 3)
    # The PNG's metadata is written field by field: settings and loss, no path of the server.
    from onnxstyle.runtime.image_io import read_png_text

    path = server.data.parent / "result.png"
    path.write_bytes(png.content)
    meta = json.loads(read_png_text(path)["onnxstyle"])
    assert meta["evaluations"] == 10 and meta["settings"]["size"] == 48 and meta["job"] == job["id"]
    no_server_paths(json.dumps(meta) + json.dumps(done), server.data, caffe_export)


def test_events_one_per_step_and_resume_with_last_event_id(server: Server) -> None:
    with server.client() as c:
        job = submit(c, {"size": 40, "iterations": 12}).json()
        events = read_events(c, job["id"])
        ids = [e["id"] for e in events]
        assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # numbered without gaps
        progress = [e for e in events if e["event"] == "progress"]
        assert [e["data"]["step"] for e in progress] == list(range(1, 13))
        assert all(e["data"]["eta"] is not None and e["data"]["loss"] > 0 and e["data"]["terms"] for e in progress)
        assert progress[5]["data"]["preview"].startswith(f"/v1/jobs/{job['id']}/preview")
        assert events[-1]["event"] == "done" and events[-1]["data"]["result"] == f"/v1/jobs/{job['id']}/result"
        # A client that saw step 7 reconnects: the stream goes on from step 8.
        seventh = progress[6]["id"]
        resumed = read_events(c, job["id"], last_id=seventh)
        assert resumed[0]["id"] == seventh + 1 and resumed[0]["data"]["step"] == 8
        assert [e["id"] for e in resumed] == ids[ids.index(seventh) + 1 :]
        # After the end, a reconnect gets the outcome at once and the stream closes.
        again = read_events(c, job["id"], last_id=events[-1]["id"])
        assert [e["event"] for e in again] == ["done"]


def _error(r: Any, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"], body
    return str(body["error"])


def test_bad_uploads_are_refused_with_their_status(server: Server, caffe_export: Path) -> None:
    png = CONTENT.read_bytes()
    small = {"settings": json.dumps({"size": 32, "iterations": 2})}  # only the images are at fault
    with server.client() as c:
        big = files(np.random.default_rng(0).bytes(int(1.5 * 2**20)))
        assert "limit of 1 MB" in _error(c.post("/v1/jobs", files=big, data=small), 413)
        assert "not an image" in _error(c.post("/v1/jobs", files=files(b"hello, not a picture"), data=small), 415)
        assert "truncated" in _error(c.post("/v1/jobs", files=files(png[: len(png) // 2]), data=small), 415)
        style_text = _error(c.post("/v1/jobs", files=files(CONTENT, b"GIF89a but not really"), data=small), 415)
        assert style_text.startswith("style:")
        bomb = _error(c.post("/v1/jobs", files=files(png_header_only(30000, 30000)), data=small), 413)
        assert "900 M pixels" in bomb and "limit of 50 M pixels" in bomb
        assert "multipart" in _error(c.post("/v1/jobs", json={"content": "x"}), 415)
        assert "style" in _error(c.post("/v1/jobs", files=[("content", ("c.png", png, "image/png"))], data=small), 422)
        for r in (c.post("/v1/jobs", files=big, data=small), c.post("/v1/jobs", files=files(png_header_only(30000, 30000)), data=small)):
            no_server_paths(r.text, server.data, caffe_export)
    assert list((server.data / "jobs").glob("*/upload.tmp")) == []  # nothing left behind


@pytest.mark.parametrize(
    ("settings", "status", "words"),
    [
        ("{size: 64", 400, "not valid JSON"),
        ("[64]", 422, "JSON object"),
        ({"size": "big"}, 422, "settings.size"),
        ({"colour": 1}, 422, "known settings"),
        ({"size": 16}, 422, "settings.size"),
        ({"size": 2048}, 422, "limit of 1024 px"),
        ({"iterations": 5000}, 422, "limit of 1000"),
        ({"init": "image"}, 422, "settings.init"),
        ({"style_blend": [0.0]}, 422, "not all zero"),
        ({"scales": [64, 32]}, 422, "must rise"),
        ({"preset": "tf-tutorial"}, 422, "gatys export"),
        ({"size": 1024}, 422, "memory budget"),  # ~4 GB estimated; a worker's share is 1.4 GB
    ],
)
def test_bad_settings_are_refused(server: Server, settings: Any, status: int, words: str) -> None:
    with server.client() as c:
        assert words in _error(submit(c, settings), status)


def test_ids_tokens_and_not_ready(server: Server) -> None:
    with server.client() as c, server.client(auth=False) as anonymous:
        assert "bearer token" in _error(anonymous.post("/v1/jobs", files=files()), 401)
        assert _error(anonymous.get(f"/v1/jobs/{uuid.uuid4()}"), 401)
        wrong = anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert _error(wrong, 401) and wrong.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").json()["status"] == "ok"  # liveness needs no token
        assert "no job" in _error(c.get(f"/v1/jobs/{uuid.uuid4()}"), 404)
        for path in ("/v1/jobs/not-a-uuid", "/v1/jobs/..%2F..%2Fjobs.sqlite3/result", f"/v1/jobs/{uuid.uuid4()}/events"):
            _error(c.get(path), 404)
        job = submit(c, LONG).json()
        assert "yet" in _error(c.get(f"/v1/jobs/{job['id']}/result"), 409)
        c.delete(f"/v1/jobs/{job['id']}")
        assert wait_status(c, job["id"], ("cancelled",))["status"] == "cancelled"
        assert "cancelled" in _error(c.get(f"/v1/jobs/{job['id']}/result"), 409)


def test_cancel_running_and_queued_jobs(server: Server) -> None:
    with server.client() as c:
        running = [submit(c, LONG).json()["id"] for _ in range(2)]
        for job_id in running:
            wait_step(c, job_id, 2)
        queued = submit(c, LONG).json()["id"]
        assert c.get(f"/v1/jobs/{queued}").json()["status"] == "queued"
        r = c.delete(f"/v1/jobs/{queued}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        t0 = time.monotonic()
        for job_id in running:
            r = c.delete(f"/v1/jobs/{job_id}")
            assert r.status_code == 202 and r.json()["cancelling"] is True
        ended = [wait_status(c, job_id, ("cancelled", "failed", "done"), timeout=10) for job_id in running]
        assert [j["status"] for j in ended] == ["cancelled", "cancelled"]
        assert time.monotonic() - t0 < 5.0, "workers took too long to stop"
        steps = [j["step"] for j in ended]
        time.sleep(0.5)
        assert [c.get(f"/v1/jobs/{j}").json()["step"] for j in running] == steps  # really stopped
        assert c.get("/healthz").json()["workers"] == 2  # the same warm workers carry on
        after = submit(c, {"size": 32, "iterations": 3}).json()
        assert wait_status(c, after["id"], ("done", "failed"))["status"] == "done"
        # A finished job can be deleted: it and its files are gone.
        assert c.delete(f"/v1/jobs/{after['id']}").json() == {"id": after["id"], "status": "deleted"}
        _error(c.get(f"/v1/jobs/{after['id']}"), 404)
        assert not (server.data / "jobs" / after["id"]).exists()


def test_a_killed_worker_fails_its_job_and_is_replaced(server: Server) -> None:
    with server.client() as c:
        job = submit(c, LONG).json()
        wait_step(c, job["id"], 1)
        workers = server.workers()
        assert len(workers) == 2
        for p in workers:
            p.kill()
        failed = wait_status(c, job["id"], ("failed",), timeout=20)
        assert "worker process died (killed by SIGKILL)" in failed["error"]
        deadline = time.monotonic() + 60
        while c.get("/healthz").json()["workers"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/healthz").json()["workers"] == 2
        assert "onnxstyle_worker_restarts_total 2" in c.get("/metrics").text
        after = submit(c, {"size": 32, "iterations": 3}).json()
        assert wait_status(c, after["id"], ("done", "failed"))["status"] == "done"
    assert server.process.poll() is None  # the server itself never went down


def test_burst_gets_202_or_429_and_every_accepted_job_finishes(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """A bounded load test: 15 simultaneous requests against a queue of 3 and 2 workers."""
    burst = 5 * QUEUE
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], server.tree_rss())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with server.client(timeout=60) as c:
            with concurrent.futures.ThreadPoolExecutor(burst) as pool:
                responses = list(pool.map(lambda _: submit(c, {"size": 48, "iterations": 15}), range(burst)))
            codes = [r.status_code for r in responses]
            assert set(codes) <= {202, 429}, codes
            assert codes.count(202) >= QUEUE and codes.count(429) >= 1, codes
            assert all("queue is full" in r.json()["error"] for r in responses if r.status_code == 429)
            assert all(r.headers.get("retry-after") for r in responses if r.status_code == 429)
            accepted = [r.json()["id"] for r in responses if r.status_code == 202]
            finished = [wait_status(c, job_id, ("done", "failed", "cancelled"), timeout=90) for job_id in accepted]
    finally:
        sampling.set()
        sampler.join()
    assert [j["status"] for j in finished] == ["done"] * len(accepted)
    assert peak[0] <= BUDGET_MB * 2**20, f"peak {peak[0] / 2**20:.0f} MB over the budget of {BUDGET_MB} MB"
    waits = sorted(j["wait"] for j in finished)
    p50, p95 = statistics.median(waits), waits[min(len(waits) - 1, round(0.95 * (len(waits) - 1)))]
    with capsys.disabled():  # the report shows in every run, not only with -s
        print(f"\nburst of {burst}: {len(accepted)} accepted, {burst - len(accepted)} refused (429); queue wait p50 {p50:.2f} s, "
              f"p95 {p95:.2f} s; peak memory {peak[0] / 2**20:.0f} MB of a {BUDGET_MB} MB budget")


def test_metrics_and_page(server: Server) -> None:
    with server.client() as c:
        text = c.get("/metrics").text
        for name in ("onnxstyle_queue_depth 0", "onnxstyle_jobs_running 0", 'onnxstyle_jobs{status="done"}',
                     'onnxstyle_jobs_finished_total{status="failed"}', "onnxstyle_evaluations_per_second",
                     "onnxstyle_evaluations_total", f"onnxstyle_memory_budget_bytes {BUDGET_MB * 2**20}"):
            assert name in text, name
        page = c.get("/")
        assert page.status_code == 200 and "<form" in page.text and "script-src 'self'" in page.headers["content-security-policy"]
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere: works offline
        assert c.get("/static/app.js").status_code == 200
        _error(c.get("/static/../jobs.sqlite3"), 404)


def test_kill_9_and_restart_keep_results_and_account_for_every_job(caffe_export: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_server(caffe_export, data, "--workers", "1", "--threads", "1")
    try:
        with first.client() as c:
            done = submit(c, {"size": 40, "iterations": 5}).json()["id"]
            assert wait_status(c, done, ("done", "failed"))["status"] == "done"
            result = c.get(f"/v1/jobs/{done}/result").content
            running = submit(c, LONG).json()["id"]
            waiting = submit(c, {"size": 40, "iterations": 5}).json()["id"]
            wait_step(c, running, 1)
            assert c.get(f"/v1/jobs/{waiting}").json()["status"] == "queued"
        # A second server on the same data would run the same jobs: refused in one line.
        other = subprocess.run(serve_command(caffe_export, data, free_port()), capture_output=True, text=True, env=cli_env(), timeout=120)
        assert other.returncode == 1 and "in use by another onnxstyle serve" in other.stderr, other.stderr
        workers = [p.pid for p in first.workers()]
        first.kill()
        # Orphaned workers notice their server is gone and leave (at their next evaluation).
        assert not wait_gone(workers, 15), "workers outlived a killed server"
    finally:
        if first.process.poll() is None:
            first.kill()
    second = start_server(caffe_export, data, "--workers", "1", "--threads", "1")
    try:
        with second.client() as c:
            assert c.get(f"/v1/jobs/{done}").json()["status"] == "done"
            assert c.get(f"/v1/jobs/{done}/result").content == result
            lost = c.get(f"/v1/jobs/{running}").json()
            assert lost["status"] == "failed" and "server stopped while this job was running" in lost["error"]
            assert wait_status(c, waiting, ("done", "failed"))["status"] == "done"
    finally:
        assert second.stop() == 0, second.log_text()


def test_without_the_serve_extra_one_line_and_exit_10() -> None:
    block = """
import sys
class _NoWeb:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "uvicorn", "starlette"):
            raise ImportError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoWeb())
sys.argv = ["onnxstyle", *sys.argv[1:]]
from onnxstyle.cli import main
main()
"""
    run = lambda *args: subprocess.run([sys.executable, "-c", block, *args], capture_output=True, text=True, env=cli_env(), timeout=60)  # noqa: E731
    r = run("serve", "--models", str(DATA))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 10, r.stderr
    assert len(lines) == 1 and "pip install 'onnxstyle[serve]'" in lines[0] and "fastapi" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    # The rest of the CLI never needed the web stack.
    assert run("--help").returncode == 0
