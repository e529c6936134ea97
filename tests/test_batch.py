"""Batch: resume by skipping outputs that exist, a failing item reported while the others
finish, the split of cores, and a real local Ray cluster."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers import DATA, cli_env
from video_helpers import run_cli_without

from onnxstyle.commands.batch import Tally, plan_items
from onnxstyle.workers import ray_address
from onnxstyle.workers.pools import split_cores
from onnxstyle.runtime.image_io import load_image, probe_image, read_png_text


def batch_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "onnxstyle.cli", "batch", *args]


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "tubingen.png", folder / "tubingen.png")
    shutil.copy(DATA / "the_scream.png", folder / "scream.png")
    data = (DATA / "starry_night.png").read_bytes()
    (folder / "broken.png").write_bytes(data[: len(data) // 2])  # cut short: must be refused
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


@pytest.mark.slow
def test_batch_reports_a_corrupt_item_finishes_the_others_and_resumes(caffe_export: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = batch_cli(str(inputs), str(DATA / "starry_night.png"), "-o", str(out), "--size", "40", "--iterations", "4",
                     "--models", str(caffe_export), "--device", "cpu", "--workers", "2", "--threads", "1")
    r = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 6, r.stderr  # ImageError's code: the one kind of failure
    assert "broken.png" in r.stderr and "truncated" in r.stderr
    assert "2 done, 0 skipped (output exists), 1 failed of 3" in r.stderr
    made = sorted(p.name for p in out.iterdir())
    assert made == ["scream.png", "tubingen.png"]
    assert probe_image(out / "tubingen.png").oriented == (30, 40)  # 96x72 at --size 40
    assert probe_image(out / "scream.png").oriented == (40, 31)  # 75x96
    for name in made:
        assert "starry_night.png" in read_png_text(out / name)["onnxstyle"]
    stylized, _ = load_image(out / "tubingen.png")
    original, _ = load_image(DATA / "tubingen.png", 40)
    assert np.abs(stylized - original).mean() > 0.01  # stylized, not copied
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert again.returncode == 6 and "skipping 2 of 3 images" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes  # not redone

    (inputs / "broken.png").unlink()
    done = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0 and "0 done, 2 skipped" in done.stderr


def test_outputs_keep_both_names_when_two_inputs_share_a_stem(tmp_path: Path) -> None:
    for name in ("a.jpg", "a.png", "b.webp", ".hidden.png", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    items = plan_items(tmp_path, tmp_path / "out", ".png")
    assert [(i.name, i.output.name) for i in items] == [("a.jpg", "a.jpg.png"), ("a.png", "a.png.png"), ("b.webp", "b.png")]


@pytest.mark.parametrize(
    "cores,items,workers,threads,cap,expect",
    [
        (2, 10, None, None, None, (2, 1)),  # one single-threaded worker per core
        (8, 3, None, None, None, (3, 2)),  # never more workers than items; their threads fill the cores
        (8, 10, None, None, 2, (2, 4)),  # memory for two runs only
        (8, 10, None, 4, None, (2, 4)),  # --threads 4: workers × threads ≤ cores
        (8, 10, 3, None, None, (3, 2)),  # --workers 3
        (2, 10, 4, 4, None, (4, 4)),  # both given: as asked
    ],
)
def test_cores_are_split_so_workers_times_threads_fit(
    cores: int, items: int, workers: int | None, threads: int | None, cap: int | None, expect: tuple[int, int]
) -> None:
    s = split_cores(cores, items, workers, threads, cap)
    assert (s.workers, s.threads) == expect


def test_exit_code_is_the_failures_kind_or_1_for_a_mix() -> None:
    t = Tally(3)
    assert t.exit_code() == 0
    t.failed.append(("a", "truncated", 6))
    assert t.exit_code() == 6
    t.failed.append(("b", "faults", 9))
    assert t.exit_code() == 1


def test_missing_ray_is_one_line_and_exit_10(caffe_export: Path, inputs: Path, tmp_path: Path) -> None:
    argv = ["batch", str(inputs), str(DATA / "starry_night.png"), "-o", str(tmp_path / "o"), "--models", str(caffe_export), "--ray"]
    r = run_cli_without("ray", argv, cli_env())
    assert r.returncode == 10, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "pip install 'onnxstyle[ray]'" in r.stderr


@pytest.mark.slow
def test_a_local_ray_cluster_runs_images_and_video_chunks_on_warm_actors(caffe_export: Path, tmp_path: Path) -> None:
    """Ray started here (2 CPUs, no dashboard); two actors of one CPU each, their engines set
    to one thread; the models folder shipped through the object store as to a cluster. Images
    by path, by bytes and one corrupt; then a clip in overlapping chunks, and its resume."""
    import ray

    from onnxstyle.workers.pools import RayWorkers
    from onnxstyle.workers.worker import ModelsSource, Outcome, WorkerSpec
    from onnxstyle.runtime.image_io import save_image
    from onnxstyle.runtime.settings import EngineConfig, RunSettings
    from onnxstyle.video import io as vio
    from onnxstyle.video.chunks import ChunkPlan
    from onnxstyle.video.job import VideoJob
    from video_helpers import pan, texture

    clip = tmp_path / "clip"
    clip.mkdir()
    for i, f in enumerate(pan(texture(60, 90), 7, 30, 40, (2, 1))):
        save_image(clip / f"{i}.png", f)
    job = VideoJob(clip, [DATA / "starry_night.png"], tmp_path / "styled", RunSettings(size=40, iterations=3))
    job.check_paths()
    job.prepare("test")
    job.load_styles()

    def too_slow(signum: int, frame: object) -> None:
        raise TimeoutError("the Ray test ran past its bound")

    # Where the actors copy the shipped models (named by the manifest's hash): removed after.
    digest = hashlib.sha256((caffe_export / "manifest.json").read_bytes()).hexdigest()[:16]
    copy = Path(tempfile.gettempdir()) / f"onnxstyle-models-{digest}"
    existed = copy.exists()
    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(240)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        spec = WorkerSpec(ModelsSource(str(caffe_export), "onnxstyle export"), EngineConfig(device="cpu"), job.style_rgbs, job.settings)
        with RayWorkers(spec, threads=1, workers=None, ship=True) as pool:
            assert pool.split.workers == 2 and pool.spec.models.blobs is not None
            assert ray.get([a.threads.remote() for a in pool.actors]) == [1, 1]
            broken = (DATA / "tubingen.png").read_bytes()[:300]
            tasks = [("t", ("tubingen.png", str(DATA / "tubingen.png"), None)),
                     ("s", ("scream.png", None, (DATA / "the_scream.png").read_bytes())),
                     ("b", ("broken.png", None, broken))]
            got: dict[str, Outcome] = dict(pool.map_unordered("image", tasks))
            assert got["t"].data is not None and got["s"].data is not None
            assert got["b"].data is None and got["b"].exit_code == 6 and (got["b"].error or "").startswith("broken.png:")

            reports: list[str] = []
            stats = job.run_chunks(pool, ChunkPlan(length=4, overlap=1), reports.append)  # chunks 0-3 and 3-6
            assert stats.made == 7 and len(reports) == 2 and stats.evaluations == 2 * (3 + 3 * 1)
            assert vio.done_frames(job.work) == list(range(7))
            kept = {i: vio.frame_path(job.work, i).stat().st_mtime_ns for i in range(7)}
            vio.frame_path(job.work, 5).unlink()
            reports.clear()
            again = job.run_chunks(pool, ChunkPlan(length=4, overlap=1), reports.append)
            assert again.made == 1 and again.reused == 6 and len(reports) == 1  # only the second chunk ran
            assert all(vio.frame_path(job.work, i).stat().st_mtime_ns == kept[i] for i in kept if i != 5)
    finally:
        ray.shutdown()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if not existed:
            shutil.rmtree(copy, ignore_errors=True)


# ---- Ray addresses that do not answer: one line, in the bound, before any work ----------------
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens: bound, then closed (connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "text,for_ray,local",
    [
        ("", None, True),
        ("local", None, True),
        ("auto", "auto", False),
        ("ray://head", "ray://head:10001", False),
        ("ray://10.0.0.5:10002/", "ray://10.0.0.5:10002", False),
        ("head", "head:6379", False),
        ("head:7000", "head:7000", False),
        ("[::1]:7000", "[::1]:7000", False),
    ],
)
def test_ray_address_forms(text: str, for_ray: str | None, local: bool) -> None:
    a = ray_address.parse(text)
    assert (a.for_ray(), a.local) == (for_ray, local)


@pytest.mark.parametrize("text", ["http://head:8265", "head:port", "head:70000", "ray://:10001"])
def test_a_malformed_ray_address_is_refused_by_name(text: str) -> None:
    with pytest.raises(ray_address.RayAddressError, match="expected ray://host:port"):
        ray_address.parse(text)


def test_the_option_wins_over_ray_address_in_the_environment() -> None:
    assert ray_address.resolve("head:1", {"RAY_ADDRESS": "other:2"}).for_ray() == "head:1"
    env = ray_address.resolve(None, {"RAY_ADDRESS": "ray://other:2"})
    assert (env.for_ray(), env.source) == ("ray://other:2", "RAY_ADDRESS")
    assert ray_address.resolve(None, {}).local


def _listener(reply: bytes | None) -> Iterator[int]:
    """A loopback server answering each connection with ``reply`` (None: silence, held open)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        for c in held:
            c.close()


@pytest.fixture()
def grpc_like() -> Iterator[int]:
    yield from _listener(bytes([0, 0, 6, 4, 0, 0, 0, 0, 0]) + bytes(6))  # a SETTINGS frame, as gRPC's first words


@pytest.fixture()
def silent() -> Iterator[int]:
    yield from _listener(None)


@pytest.fixture()
def not_grpc() -> Iterator[int]:
    yield from _listener(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def test_an_address_is_checked_in_its_bound(grpc_like: int, silent: int, not_grpc: int) -> None:
    ray_address.check(ray_address.parse(f"127.0.0.1:{grpc_like}"), 2.0)  # a gRPC server answers: passed
    for port, why in ((closed_port(), "connection refused"), (not_grpc, "not as a Ray head"), (silent, "no answer within 0.5 s")):
        t0 = time.monotonic()
        with pytest.raises(ray_address.RayAddressError, match=why) as e:
            ray_address.check(ray_address.parse(f"ray://127.0.0.1:{port}"), 0.5)
        assert time.monotonic() - t0 < 1.5
        assert f"ray://127.0.0.1:{port} (--ray-address)" in str(e.value) and e.value.exit_code == 8


def test_ray_workers_never_hand_ray_an_address_that_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from onnxstyle.workers.pools import RayWorkers

    def no_init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", no_init)
    port = closed_port()
    with pytest.raises(ray_address.RayAddressError, match=f"127.0.0.1:{port}"):
        RayWorkers(None, 1, None, f"127.0.0.1:{port}", timeout=0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["batch", "video"])
@pytest.mark.parametrize("via", ["option", "env"])
def test_an_unreachable_ray_address_ends_the_command_in_one_line(inputs: Path, tmp_path: Path, command: str, via: str) -> None:
    port = closed_port()
    address = f"127.0.0.1:{port}"
    env = cli_env()
    env.pop("RAY_ADDRESS", None)
    if command == "batch":
        argv = ["batch", str(inputs), str(DATA / "starry_night.png"), "-o", str(tmp_path / "out")]
    else:
        clip = tmp_path / "clip.mp4"
        clip.write_bytes(b"never decoded: the address is checked first")
        argv = ["video", str(clip), str(DATA / "starry_night.png"), "-o", str(tmp_path / "out.mp4")]
    if via == "option":
        argv += ["--ray-address", address]
    else:
        env["RAY_ADDRESS"] = address
        argv += ["--ray"]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "onnxstyle.cli", *argv, "--ray-timeout", "2"], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    seconds = time.monotonic() - t0
    assert r.returncode == 8, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "connection refused" in lines[0], r.stderr
    assert ("--ray-address" if via == "option" else "RAY_ADDRESS") in lines[0]
    assert seconds < 2 + 20, seconds  # the bound, plus the interpreter's start on a loaded machine
    assert not (tmp_path / "out").exists()  # nothing was made
