"""Helpers for the service's tests: the real `onnxstyle serve` in a subprocess on loopback,
inputs made here, Server-Sent Events read off the wire, and memory of a process tree."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from helpers import BLOCK_TORCH, DATA, cli_env

CONTENT = DATA / "tubingen.png"  # 96x72
STYLE = DATA / "starry_night.png"
# The server runs as `onnxstyle serve` with torch unimportable, as on an edge box.
SERVE_CODE = BLOCK_TORCH + "sys.argv = ['onnxstyle', *sys.argv[1:]]\nfrom onnxstyle.cli import main\nmain()\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running `onnxstyle serve`; its output goes to a log file read on failure."""

    process: subprocess.Popen[bytes]
    url: str
    data: Path
    log: Path
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, timeout: float = 30.0, auth: bool = True) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers if auth else {}, timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.is_file() else ""

    def workers(self) -> list[psutil.Process]:
        """The worker processes (not multiprocessing's resource tracker)."""
        kids = psutil.Process(self.process.pid).children()
        return [p for p in kids if "spawn_main" in " ".join(p.cmdline())]

    def tree_rss(self) -> int:
        """Resident bytes of the server and every process under it."""
        root = psutil.Process(self.process.pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> int | None:
        """SIGINT (Ctrl-C), as a person stops it; killed if it does not end in 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # the whole group, as a terminal does
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """kill -9 of the server process alone (its workers must notice by themselves)."""
        self.process.kill()
        self.process.wait(10)


def serve_command(models: Path, data: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-c", SERVE_CODE, "serve", "--models", str(models), "--data", str(data), "--port", str(port), *args]


def start_server(models: Path, data: Path, *args: str, token: str | None = None, timeout: float = 120.0) -> Server:
    """`onnxstyle serve` on a free loopback port; returns once /healthz answers."""
    port = free_port()
    log = data.parent / f"{data.name}-{port}.log"
    env = cli_env()
    env.pop("ONNXSTYLE_TOKEN", None)
    if token is not None:
        env["ONNXSTYLE_TOKEN"] = token  # the variable, as the docs recommend over --token
    cmd = serve_command(models, data, port, *args)
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", data, log, token, {"Authorization": f"Bearer {token}"} if token else {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise AssertionError(f"server did not answer within {timeout} s:\n{server.log_text()}")


def files(content: bytes | Path = CONTENT, *styles: bytes | Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart files: one content, one or more styles (the 96x72 test images by default)."""

    def part(name: str, value: bytes | Path, index: int) -> tuple[str, tuple[str, bytes, str]]:
        data = value.read_bytes() if isinstance(value, Path) else value
        return name, (f"{name}{index}.png", data, "image/png")

    return [part("content", content, 0)] + [part("style", s, i) for i, s in enumerate(styles or (STYLE,))]


def submit(client: httpx.Client, settings: dict[str, Any] | str | None = None, upload: list[Any] | None = None) -> httpx.Response:
    data = {} if settings is None else {"settings": settings if isinstance(settings, str) else json.dumps(settings)}
    return client.post("/v1/jobs", files=upload or files(), data=data)


def wait_status(client: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("status") in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout} s: {job}")


def wait_step(client: httpx.Client, job_id: str, step: int, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("status") == "running" and job.get("step", 0) >= step:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach step {step} in {timeout} s: {job}")


def read_events(client: httpx.Client, job_id: str, last_id: int | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
    """Parse the event stream off the wire (not through our own code) until it ends."""
    headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
    events: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for block in _blocks(response.iter_lines()):
            if "data" in block:
                events.append({"id": int(block["id"]), "event": block.get("event", "message"), "data": json.loads(block["data"])})
                if len(events) >= limit:
                    break
    return events


def _blocks(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    block: dict[str, str] = {}
    for line in lines:
        if not line:
            if block:
                yield block
            block = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            block[key] = value[1:] if value.startswith(" ") else value
    if block:
        yield block


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb's first bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def no_server_paths(text: str, *paths: Path) -> None:
    for p in paths:
        for form in {str(p), str(p.resolve())}:
            assert form not in text, f"a server path ({form}) leaked: {text[:300]}"
    assert str(Path.home()) + os.sep not in text, f"the home folder leaked: {text[:300]}"
