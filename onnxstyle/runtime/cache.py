"""One per-user cache of compiled models, bounded in size, never inside a models folder.

``<cache_root>/compiled/<graph>-<engine>-<precision>-<hash>/`` holds one engine's compiled
forms of one graph of one export on one CPU: OpenVINO's ``CACHE_DIR`` and TensorRT's engine
cache (each names its files itself, one per input shape) and onnxruntime's optimized CPU
model. The hash covers the export's identity (its ``settings_key`` and the graph's size and
sha256 from the manifest), the engine and its version, the precision and device, and the
CPU's instruction set; ``entry.json`` spells it out.

Blobs are 50-100 MB each (one per graph and image size), so the cache is capped
(``ONNXSTYLE_CACHE_MAX``, default 2 GiB) and the least recently used files go first.
"Used" is the file's mtime, set on every load, since atime is often off (noatime). Which
files a load used is known because the cache watches each compile: files it writes are
recorded per shape in ``index.json``, and a later load of that shape touches them.

Every compile, load and eviction runs under one :class:`filelock.FileLock`: the workers of
batch and serve share the cache, OpenVINO fails when two processes write one ``CACHE_DIR``
at once, and a blob is never deleted while another process is reading it. An evicted or
unreadable blob only means a recompile; a cache that cannot be written means running
uncached. Neither is an error.

``compiled/selfcheck/`` holds the models check's verdicts (runtime/selfcheck.py), one small JSON
per export, engine, precision and CPU: evicted like any file (then checked again), and emptied by
``onnxstyle cache clear``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exportdir import MANIFEST, cache_root
from ..errors import OnnxStyleError

ENV_MAX = "ONNXSTYLE_CACHE_MAX"
ENV_LOG = "ONNXSTYLE_CACHE_LOG"
# 2 GiB: one stylize at three scales compiles features and loss_grad per scale, about
# 3 x (52 + 104) MB = 470 MB in OpenVINO blobs (tile_grad adds 104 MB), and onnxruntime's
# optimized CPU copy is another 150 MB per export. 2 GiB keeps a few such runs (other sizes,
# bf16 and fp32) warm, so a run never evicts its own blobs, while staying a small share of a
# laptop's disk; raise it for many sizes (a serve instance), lower it on small disks.
DEFAULT_MAX = 2 * 2**30
LOCK = ".lock"
ENTRY = "entry.json"
INDEX = "index.json"
_META = {LOCK, ENTRY, INDEX}


def compiled_root() -> Path:
    return cache_root() / "compiled"


def max_bytes(text: str | None = None) -> int:
    """The cap: ``text`` ('2G', '500M', bytes), else ``$ONNXSTYLE_CACHE_MAX``, else 2 GiB."""
    from .settings import parse_size

    raw = text if text is not None else os.environ.get(ENV_MAX)
    if raw is None or not raw.strip():
        return DEFAULT_MAX
    try:
        return parse_size(raw)
    except ValueError:
        raise OnnxStyleError(f"{ENV_MAX}={raw!r}: expected a positive size like 2G, 500M or a number of bytes") from None


def cpu_signature() -> str:
    """Compiled CPU code is specific to the instruction set: a cache on a shared home folder
    must not hand an AVX-512 blob to a machine without it."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    flags = " ".join(sorted(flags.partition(":")[2].split()))
    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:12]


def export_identity(folder: Path, graph: str, exact: bool = False) -> dict[str, Any]:
    """What makes a graph the one it is: the manifest's settings key and the files entries of
    the graph and of the data it reads (weights.bin). ``exact`` adds the files' on-disk size
    and mtime: onnxruntime's and TensorRT's caches do not check the model they were made from
    (OpenVINO's hashes the model itself), so a graph edited in place must not find them."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        data = {}
    files = data.get("files") if isinstance(data.get("files"), dict) else {}
    name = f"{graph}.onnx"
    mine = {k: v for k, v in files.items() if k == name or not k.endswith(".onnx")}
    ident: dict[str, Any] = {"settings_key": data.get("settings_key"), "graph": graph, "files": mine}
    if not files or exact:
        # No manifest entry to go by (an older export): the file's own path and stat.
        ident["stat"] = {}
        for k in sorted({name, *mine}):
            try:
                st = (folder / k).stat()
            except OSError:
                continue
            ident["stat"][k] = [st.st_size, st.st_mtime_ns]
        if not files:
            ident["path"] = str(folder.resolve())
    return ident


def shape_name(shapes: dict[str, tuple[int, ...]] | None) -> str:
    """What one compile is for ('dynamic' without shapes): the files it writes are recorded
    under this name, and marked used whenever it is loaded again."""
    if not shapes:
        return "dynamic"
    return ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in sorted(shapes.items()))


@dataclass(frozen=True)
class CacheKey:
    """One CACHE_DIR: a graph of an export, compiled by one engine for one precision and device."""

    identity: dict[str, Any]
    engine: str
    version: str
    precision: str
    device: str = "cpu"

    def folder_name(self) -> str:
        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return f"{self.identity['graph']}-{self.engine}-{self.precision}-{hashlib.sha256(blob).hexdigest()[:16]}"

    def describe(self) -> dict[str, Any]:
        return {
            "export": self.identity, "engine": self.engine, "version": self.version,
            "precision": self.precision, "device": self.device, "cpu": cpu_signature(),
        }


def cache_lock(root: Path | None = None) -> Any:
    from filelock import FileLock

    root = root or compiled_root()
    return FileLock(str(root / LOCK))


def _files(root: Path) -> list[Path]:
    """Every cached file (the metadata and the lock aside), at any depth."""
    if not root.is_dir():
        return []
    return [p for p in root.rglob("*") if p.name not in _META and p.is_file()]


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in _files(folder):
        try:
            st = p.stat()
        except OSError:
            continue
        out[p.relative_to(folder).as_posix()] = (st.st_mtime_ns, st.st_size, st.st_atime_ns)
    return out


def touch(paths: list[Path]) -> None:
    """Mark files used now; a file gone (evicted by another process) is simply skipped."""
    for p in paths:
        try:
            os.utime(p)
        except OSError:
            pass


@contextmanager
def compiling(key: CacheKey, shape: str, cap: int | None = None) -> Iterator[Path | None]:
    """The folder to compile into or load from, held under the cache's lock.

    ``shape`` names what is compiled (input shapes, or 'dynamic'): the files a compile writes
    are recorded under it, and a later load of it marks them used. After the body the cache
    is trimmed to ``cap``. Yields None where the cache cannot be written (a read-only home):
    the caller then runs uncached.
    """
    limit = max_bytes() if cap is None else cap  # a bad ONNXSTYLE_CACHE_MAX fails before compiling
    if _UNCACHED.get():
        yield None
        return
    root = compiled_root()
    folder = root / key.folder_name()
    lock = _locked(root, folder, key)
    if lock is None:
        yield None
        return
    try:
        before = _snapshot(folder)
        t0 = time.perf_counter()
        yield folder
        wrote = _record_use(folder, shape, before)
        _log_event(folder, shape, wrote, time.perf_counter() - t0)
        evict(limit, root)
    finally:
        lock.release()


_UNCACHED: ContextVar[bool] = ContextVar("onnxstyle_uncached", default=False)


@contextmanager
def uncached(on: bool = True) -> Iterator[None]:
    """Compiles in this block (of this thread) are not cached: the models check's problem size,
    compiled once per machine, would otherwise hold 200 MB of blobs no run loads again."""
    token = _UNCACHED.set(on)
    try:
        yield
    finally:
        _UNCACHED.reset(token)


# ---- the models check's verdicts (runtime/selfcheck.py): tiny, beside the blobs ------------------
VERDICTS = "selfcheck"


def verdict_path(key: dict[str, Any]) -> Path:
    """``compiled/selfcheck/<engine>-<precision>-<hash>.json``; the hash covers ``key`` and the
    CPU's instruction set, so a cache shared by two machines holds a verdict for each."""
    blob = json.dumps({**key, "cpu": cpu_signature()}, sort_keys=True).encode()
    name = f"{key.get('engine', 'engine')}-{key.get('precision', 'any')}-{hashlib.sha256(blob).hexdigest()[:16]}.json"
    return compiled_root() / VERDICTS / name


def read_verdict(key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored verdict for ``key``, marked used (the cache evicts the least recently used
    file first); None where there is none or it does not read."""
    path = verdict_path(key)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(key)) or not isinstance(data.get("verdict"), dict):
        return None
    touch([path])
    return data["verdict"]


def write_verdict(key: dict[str, Any], verdict: dict[str, Any]) -> bool:
    """Store a verdict (whole or not at all); False where the cache cannot be written."""
    path = verdict_path(key)
    root = compiled_root()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with cache_lock(root):  # eviction drops emptied folders under the lock
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".verdict-", dir=path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"key": key, "cpu": cpu_signature(), "verdict": verdict}, f, indent=1, sort_keys=True)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except OSError:
        return False
    return True


def log_verdict(verdict: dict[str, Any], seconds: float) -> None:
    """The check's line in ``$ONNXSTYLE_CACHE_LOG``, shaped as a load's (nothing compiled)."""
    path = os.environ.get(ENV_LOG)
    if not path:
        return
    event = {"folder": VERDICTS, "shape": "check", "compiled": False, "files": [], "seconds": round(seconds, 4), "selfcheck": verdict}
    try:
        with open(path, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")
    except OSError:
        pass


def _log_event(folder: Path, shape: str, wrote: list[str], seconds: float) -> None:
    """One JSON line per compile or load to ``$ONNXSTYLE_CACHE_LOG``, if set: how an operator
    (and benchmarks/shapes.py) counts the compiles a workload pays for, and their seconds."""
    path = os.environ.get(ENV_LOG)
    if not path:
        return
    event = {"folder": folder.name, "shape": shape, "compiled": bool(wrote), "files": wrote, "seconds": round(seconds, 4)}
    try:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")
    except OSError:
        pass


def _locked(root: Path, folder: Path, key: CacheKey) -> Any:
    """The cache's lock, held, with ``folder`` made and described; None where the cache
    cannot be written (read-only, full)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = cache_lock(root)
        lock.acquire()
    except OSError:
        return None
    try:
        if not (folder / ENTRY).is_file():
            # The folder may have been evicted whole while we waited for the lock.
            folder.mkdir(parents=True, exist_ok=True)
            (folder / ENTRY).write_text(json.dumps(key.describe(), indent=1, sort_keys=True) + "\n")
    except OSError:
        lock.release()
        return None
    return lock


def _record_use(folder: Path, shape: str, before: dict[str, tuple[int, int, int]]) -> list[str]:
    after = _snapshot(folder)
    written = sorted(k for k, v in after.items() if before.get(k, (None, None))[:2] != v[:2])
    # Read during this compile, where the file system keeps atime (strictatime, or relatime
    # after our utime): a blob loaded before the index knew of it.
    read = [k for k, v in after.items() if k in before and v[2] != before[k][2]]
    index_path = folder / INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if written:
        index[shape] = written
        try:
            index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass
    touch([folder / k for k in {*written, *read, *index.get(shape, [])}])
    return written


def evict(cap: int, root: Path | None = None) -> int:
    """Delete least recently used files until the cache holds at most ``cap`` bytes; the
    caller holds the lock. Returns the bytes freed. Folders left without files go too."""
    root = root or compiled_root()
    entries = []
    for p in _files(root):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime_ns, st.st_size, p))
    entries.sort(key=lambda e: (e[0], str(e[2])))
    total = sum(e[1] for e in entries)
    freed = 0
    for _, size, p in entries:
        if total <= cap:
            break
        if not _unlink(p):
            continue
        total -= size
        freed += size
    if freed:
        _drop_empty(root)
    return freed


def _unlink(p: Path) -> bool:
    """Delete one file; False where it cannot go (open on Windows): the next one goes instead."""
    try:
        p.unlink()
        return True
    except FileNotFoundError:
        return True
    except PermissionError:
        pass
    except OSError:
        return False
    try:
        # OpenVINO writes its blobs read-only (0440), which Windows refuses to delete.
        p.chmod(0o644)
        p.unlink()
        return True
    except OSError:
        return False


def _drop_empty(root: Path) -> None:
    for d in root.iterdir():
        if d.is_dir() and not _files(d):
            shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class Usage:
    root: Path
    bytes: int
    files: int
    cap: int

    def line(self) -> str:
        return f"compiled cache: {self.root}, {self.bytes / 2**20:.0f} MiB in {self.files} files, cap {self.cap / 2**20:.0f} MiB ({ENV_MAX})"


def _size(root: Path) -> tuple[int, int]:
    sizes = []
    for p in _files(root):
        try:
            sizes.append(p.stat().st_size)
        except OSError:
            pass
    return sum(sizes), len(sizes)


def usage(cap: int | None = None) -> Usage:
    root = compiled_root()
    return Usage(root, *_size(root), max_bytes() if cap is None else cap)


def clear() -> int:
    """Empty the compiled cache under its lock (no process is compiling or loading from it
    meanwhile); returns the bytes freed."""
    root = compiled_root()
    if not root.is_dir():
        return 0
    try:
        with cache_lock(root):
            freed = _size(root)[0]
            for d in root.iterdir():
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
    except OSError as e:
        raise OnnxStyleError(f"cannot clear the compiled cache {root}: {e.strerror or e}") from None
    return freed - _size(root)[0]


def info_line() -> str:
    """For `onnxstyle info`: where, how big, and the cap (or why the cap is not readable)."""
    try:
        return usage().line()
    except OnnxStyleError as e:
        root = compiled_root()
        return f"compiled cache: {root}, {_size(root)[0] / 2**20:.0f} MiB; {e}"


def command(action: str, cap: str | None = None) -> str:
    """`onnxstyle cache [show|clear] [--max SIZE]`: the report line after doing ``action``;
    ``cap`` trims the cache to that size now (under the lock, as a compile would)."""
    if action not in ("show", "clear"):
        raise ValueError(f"onnxstyle cache {action!r}: expected show or clear")
    said = ""
    if action == "clear":
        said = f"cleared {clear() / 2**20:.0f} MiB; "
    if cap is not None:
        limit = max_bytes(cap)
        root = compiled_root()
        freed = 0
        if root.is_dir():
            try:
                with cache_lock(root):
                    freed = evict(limit, root)
            except OSError as e:
                raise OnnxStyleError(f"cannot trim the compiled cache {root}: {e.strerror or e}") from None
        said += f"trimmed {freed / 2**20:.0f} MiB to fit {limit / 2**20:.0f} MiB; "
    return said + info_line()
