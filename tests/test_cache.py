"""The compiled cache: per user, bounded (least recently used first), shared by processes under
one lock, and the only place compiled models go: a models folder is never written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import DATA, cli_env
from onnxstyle.errors import OnnxStyleError
from onnxstyle.runtime import cache
from onnxstyle.runtime.settings import EngineConfig

ONNXSTYLE = Path(sys.executable).parent / "onnxstyle"


@pytest.fixture()
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of the test's own (the session's is shared by every test)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ONNXSTYLE_CACHE", str(root))
    monkeypatch.delenv(cache.ENV_MAX, raising=False)
    return root


def fake_key(n: int) -> cache.CacheKey:
    return cache.CacheKey({"settings_key": f"k{n}", "graph": "features", "files": {}}, "fake", "1", "f32")


def write_blob(folder: Path, name: str, size: int, mtime: float | None = None) -> Path:
    p = folder / name
    p.write_bytes(os.urandom(size))
    if mtime is not None:
        os.utime(p, (mtime, mtime))
    return p


# ---- the cap and least-recently-used eviction (unit) ---------------------------------------------
def test_cap_parses_sizes_and_defaults_to_2_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache.ENV_MAX, raising=False)
    assert cache.max_bytes() == 2 * 2**30
    monkeypatch.setenv(cache.ENV_MAX, "500M")
    assert cache.max_bytes() == 500 * 2**20
    assert cache.max_bytes("2G") == 2 * 2**30 and cache.max_bytes("1000") == 1000
    monkeypatch.setenv(cache.ENV_MAX, "lots")
    with pytest.raises(OnnxStyleError, match="ONNXSTYLE_CACHE_MAX='lots'"):
        cache.max_bytes()


def test_eviction_drops_least_recently_used_files_down_to_the_cap(own_cache: Path) -> None:
    root = cache.compiled_root()
    folders = []
    for n in range(3):
        with cache.compiling(fake_key(n), "48x64", cap=10**9) as d:
            assert d is not None and d.parent == root
            write_blob(d, "a.blob", 1000)
            write_blob(d, "b.blob", 1000)
        folders.append(d)
    for n, d in enumerate(folders):  # used in the order a0 b0 a1 b1 a2 b2, oldest first
        for name, t in (("a.blob", 1000 + 10 * n), ("b.blob", 1005 + 10 * n)):
            os.utime(d / name, (t, t))
    assert cache.evict(3500, root) == 3000  # a cap of 3500 bytes keeps the last three
    assert cache.usage(3500).bytes == 3000
    assert not folders[0].exists()  # an emptied folder goes, entry.json and all
    assert sorted(p.name for p in cache._files(folders[1])) == ["b.blob"]
    assert sorted(p.name for p in cache._files(folders[2])) == ["a.blob", "b.blob"]


def test_a_load_marks_the_files_of_its_shape_used(own_cache: Path) -> None:
    """The engine names its blobs (one per shape); the cache learns which at the compile and
    touches them whenever that shape is loaded again, so the blob in use is not the one evicted."""
    key = fake_key(0)
    with cache.compiling(key, "small", cap=10**9) as d:
        write_blob(d, "111.blob", 1000)  # type: ignore[arg-type]
    with cache.compiling(key, "large", cap=10**9) as d:
        write_blob(d, "222.blob", 1000)  # type: ignore[arg-type]
    folder = cache.compiled_root() / key.folder_name()
    for name, t in (("111.blob", 1000), ("222.blob", 2000)):
        os.utime(folder / name, (t, t))
    with cache.compiling(key, "small", cap=1500) as d:
        pass  # loaded, nothing written: "small" is now the most recent, "large" goes
    assert sorted(p.name for p in cache._files(folder)) == ["111.blob"]


def test_an_unwritable_cache_means_running_uncached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("ONNXSTYLE_CACHE", str(blocker))
    with cache.compiling(fake_key(0), "any") as d:
        assert d is None


def test_cache_command_shows_and_clears(own_cache: Path) -> None:
    with cache.compiling(fake_key(0), "any", cap=10**9) as d:
        write_blob(d, "x.blob", 3 * 2**20)  # type: ignore[arg-type]
    env = cli_env(own_cache)
    shown = subprocess.run([str(ONNXSTYLE), "cache"], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0 and f"{own_cache / 'compiled'}" in shown.stdout and "3 MiB in 1 files" in shown.stdout
    info = subprocess.run([str(ONNXSTYLE), "info"], capture_output=True, text=True, env={**env, cache.ENV_MAX: "500M"}, timeout=120)
    assert info.returncode == 0 and "compiled cache:" in info.stdout and "cap 500 MiB" in info.stdout
    cleared = subprocess.run([str(ONNXSTYLE), "cache", "clear"], capture_output=True, text=True, env=env, timeout=120)
    assert cleared.returncode == 0 and "cleared 3 MiB" in cleared.stdout and "0 MiB in 0 files" in cleared.stdout
    assert cache.usage().files == 0


# ---- two processes filling one cache at once ---------------------------------------------------
FILLER = textwrap.dedent(
    """
    import os, sys
    from onnxstyle.runtime import cache
    me, cap = sys.argv[1], int(sys.argv[2])
    for i in range(24):
        key = cache.CacheKey({"settings_key": f"k{i % 3}", "graph": "g", "files": {}}, "fake", "1", "f32")
        with cache.compiling(key, f"{me}-{i}", cap=cap) as d:
            # Under the lock nothing of the cache vanishes: every file reads whole.
            for p in d.iterdir():
                if p.name.endswith(".blob"):
                    assert len(p.read_bytes()) == p.stat().st_size
            with open(d / f"{me}-{i}.blob", "wb") as f:
                for _ in range(8):
                    f.write(os.urandom(32 * 1024))
                    f.flush()
    print("ok")
    """
)


def test_two_processes_filling_the_cache_stay_under_the_cap(own_cache: Path) -> None:
    cap = 2 * 2**20  # 8 blobs of 256 KiB; the two write 48
    env = cli_env(own_cache)
    procs = [
        subprocess.Popen([sys.executable, "-c", FILLER, name, str(cap)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for name in ("p1", "p2")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0 and o.strip() == "ok", e
    used = cache.usage(cap)
    assert 0 < used.bytes <= cap and used.files == 8  # as many as fit


# ---- OpenVINO: blobs in the cache, none in the models folder -----------------------------------------
def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_openvino_compiles_into_the_cache_and_a_second_engine_loads_it(caffe_export: Path, own_cache: Path) -> None:
    from onnxstyle.runtime.engine import Engine

    before = _listing(caffe_export)
    config = EngineConfig(device="openvino", precision="fp32")
    x = np.full((1, 3, 40, 48), 0.5, np.float32)
    first = Engine(caffe_export, config).features(x)
    root = cache.compiled_root()
    (folder,) = [d for d in root.iterdir() if d.name.startswith("features-openvino-f32-")]
    blobs = sorted(p.name for p in folder.glob("*.blob"))
    assert len(blobs) == 1 and (folder / blobs[0]).stat().st_size > 40 * 2**20  # the 52 MB of conv weights
    assert _listing(caffe_export) == before  # nothing written into the models folder

    e2 = Engine(caffe_export, config)
    again = e2.features(x)
    (runner,) = e2._runners.values()
    assert runner.compiled.get_property("LOADED_FROM_CACHE") is True
    assert sorted(p.name for p in folder.glob("*.blob")) == blobs  # loaded, not recompiled
    np.testing.assert_allclose(again["gram_relu3_1"], first["gram_relu3_1"], rtol=1e-6)

    # Another size is another blob in the same folder; an evicted blob is only a recompile.
    Engine(caffe_export, config).features(np.full((1, 3, 32, 40), 0.5, np.float32))
    assert len(list(folder.glob("*.blob"))) == 2
    with cache.cache_lock():
        cache.evict(0)
    assert cache.usage().files == 0
    e3 = Engine(caffe_export, config)
    np.testing.assert_allclose(e3.features(x)["gram_relu3_1"], first["gram_relu3_1"], rtol=1e-6)
    assert next(iter(e3._runners.values())).compiled.get_property("LOADED_FROM_CACHE") is False
    assert _listing(caffe_export) == before


# ---- every command from a read-only models folder --------------------------------------------------
def _read_only_runner(models: Path, tmp_path: Path) -> tuple[list[str], Path, dict[str, str], Path]:
    """(argv prefix that runs a command with ``models`` read-only at the path returned next, the
    environment, the folder to watch for writes). A read-only bind mount in a private mount
    namespace (root ignores permission bits, so those would prove nothing); where mounts are
    not allowed, the command runs as nobody over a copy nobody may not write."""
    ro = tmp_path / "ro-models"
    ro.mkdir()
    env = cli_env(tmp_path / "cache")
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    why = "unshare is not installed"
    # ONNXSTYLE_TEST_RO=nobody takes the second way where the first works too (to test it).
    if os.environ.get("ONNXSTYLE_TEST_RO") == "nobody":
        why = "ONNXSTYLE_TEST_RO=nobody"
    elif shutil.which("unshare"):
        # The probe: mounted, and writing into it fails.
        probe = subprocess.run([*unshare, "sh", "-c", script, "sh", str(models), str(ro), "sh", "-c", f"! touch {ro}/.probe 2>/dev/null"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return [*unshare, "sh", "-c", script, "sh", str(models), str(ro)], ro, env, models
        why = probe.stderr.strip()
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip(f"no read-only bind mount here ({why}) and not root to run as another user")
    ro.rmdir()
    shutil.copytree(models, ro)
    for p in [ro, *ro.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    for p in [tmp_path, *tmp_path.parents]:
        if p != Path("/"):
            p.chmod(p.stat().st_mode | 0o111)  # nobody must be able to walk down to it
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache").chmod(0o777)
    env["HOME"] = str(tmp_path / "cache")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], ro, env, ro


@pytest.mark.slow
def test_every_command_runs_from_a_read_only_models_folder(caffe_export: Path, tmp_path: Path) -> None:
    prefix, ro, env, watched = _read_only_runner(caffe_export, tmp_path)
    before = _listing(watched)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    inputs = out / "in"
    inputs.mkdir()
    for name in ("tubingen.png", "starry_night.png"):
        shutil.copy(DATA / name, inputs / name)
    content, style = str(inputs / "tubingen.png"), str(inputs / "starry_night.png")
    tiny = ["--models", str(ro), "--size", "48", "--iterations", "2"]
    runs = {
        "stylize": ["stylize", content, style, "-o", str(out / "s.png"), *tiny],
        "stylize cpu": ["stylize", content, style, "-o", str(out / "c.png"), *tiny, "--device", "cpu"],
        "sweep": ["sweep", content, style, "-o", str(out / "sheet.png"), "--vary", "style-weight=1,100", *tiny],
        "batch": ["batch", str(inputs), style, "-o", str(out / "b"), *tiny, "--workers", "2", "--threads", "1"],
    }
    spawn = [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', '0'], check=True)"]
    if subprocess.run([*prefix, *spawn], capture_output=True, env=env, timeout=60).returncode != 0:
        # As nobody, where the interpreter lies in a folder nobody may not enter (a pyenv under
        # /root): batch's worker processes cannot start, whatever the cache does.
        runs.pop("batch")
    for what, args in runs.items():
        r = subprocess.run([*prefix, str(ONNXSTYLE), *args], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, f"{what}: {r.stderr}"
    assert (out / "s.png").is_file() and (out / "c.png").is_file() and (out / "sheet.png").is_file()
    if "batch" in runs:
        assert sorted(p.name for p in (out / "b").iterdir()) == ["starry_night.png", "tubingen.png"]
    _video_and_serve_read_only(prefix, ro, env, out)
    assert _listing(watched) == before  # nothing written into the models folder
    compiled = {d.name.rsplit("-", 2)[0] for d in (tmp_path / "cache" / "compiled").iterdir() if d.is_dir()}
    assert {"features-openvino", "loss_grad-openvino", "features-onnxruntime", "loss_grad-onnxruntime"} <= compiled


def _video_and_serve_read_only(prefix: list[str], ro: Path, env: dict[str, str], out: Path) -> None:
    """video on a tiny clip, and a real server on loopback running one job, both with the
    models folder read-only (the server's data folder is writable, as it must be)."""
    import time
    from fractions import Fraction

    import httpx

    from serve_helpers import files, free_port
    from video_helpers import texture, write_clip

    clip = out / "in" / "clip.mp4"
    write_clip(clip, [texture(32, 48, seed) for seed in range(3)], Fraction(10))
    r = subprocess.run([*prefix, str(ONNXSTYLE), "video", str(clip), str(DATA / "starry_night.png"), "-o", str(out / "v.mp4"),
                        "--models", str(ro), "--size", "48", "--iterations", "1", "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and (out / "v.mp4").stat().st_size > 0, f"video: {r.stderr}"
    port, data = free_port(), out / "serve-data"
    server = subprocess.Popen([*prefix, str(ONNXSTYLE), "serve", "--models", str(ro), "--data", str(data), "--port", str(port),
                               "--workers", "1", "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        job = httpx.post(url + "/v1/jobs", files=files(), data={"settings": '{"size": 48, "iterations": 1}'}, timeout=30)
        assert job.status_code == 202, job.text
        while (status := httpx.get(f"{url}/v1/jobs/{job.json()['id']}", timeout=10).json()["status"]) in ("queued", "running"):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.2)
        assert status == "done", status
    finally:
        server.terminate()
        server.wait(30)
