"""Where the workers run: local processes (the default) or Ray actors (``--ray``).

Both give the same thing: ``map_unordered(method, tasks)`` calls a :class:`Worker` method per
task on warm workers and yields (key, result or exception) as they finish, so the driver
reports each item as it lands and goes on after a failure. Threads are split so that
workers × threads never exceeds the cores (or, on Ray, each actor's ``num_cpus``): Ray's
OMP_NUM_THREADS does not reach onnxruntime or OpenVINO, so the engine is told explicitly.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..exportdir import GRAPHS, MANIFEST
from . import ray_address
from ..errors import MissingDependencyError, engine_message
from ..runtime.providers import physical_cores
from .worker import ModelsSource, Worker, WorkerSpec

Task = tuple[Any, tuple[Any, ...]]  # (key, arguments of the worker method)


@dataclass(frozen=True)
class Split:
    workers: int
    threads: int


def split_cores(cores: int, items: int, workers: int | None = None, threads: int | None = None, memory_cap: int | None = None) -> Split:
    """Workers and threads each, with workers × threads ≤ cores unless both were given.

    By default one single-threaded worker per core: a Gatys run alternates the graphs with
    scipy's serial L-BFGS step, so separate processes keep the cores busier than threads in
    one (benchmarks/batch.py compares local:2x1 with local:1x2). Never more workers than
    items, nor than fit in memory.
    """
    if workers is None:
        workers = max(1, min(items or 1, memory_cap or cores, cores // threads if threads is not None else cores))
    return Split(workers, threads if threads is not None else max(1, cores // workers))


# ---- local processes ------------------------------------------------------------------------
_WORKER: Worker | None = None


def _init_local(spec: WorkerSpec, threads: int) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group: the driver alone handles it (it stops the pool),
    # so a worker never dies half-way through writing a reply.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = Worker(spec, threads)


def _call_local(job: tuple[str, Any, tuple[Any, ...]]) -> tuple[Any, Any]:
    method, key, args = job
    assert _WORKER is not None
    try:
        return key, getattr(_WORKER, method)(*args)
    except Exception as e:  # noqa: BLE001 - reported for this item; the batch goes on
        return key, e


class LocalWorkers:
    """Processes each holding a warm :class:`Worker` (spawned, so no thread state is forked).

    A worker process that dies (the kernel's OOM killer, a crash in a native library) fails
    the items it held, and a fresh pool takes the rest."""

    def __init__(self, spec: WorkerSpec, split: Split) -> None:
        self.spec = spec
        self.split = split
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.split.workers, ctx, initializer=_init_local, initargs=(self.spec, self.split.threads))

    def __enter__(self) -> "LocalWorkers":
        return self

    def map_unordered(self, method: str, tasks: Iterable[Task]) -> Iterator[tuple[Any, Any]]:
        """Two tasks in flight per worker: one running, one ready the moment it finishes."""
        todo = iter(tasks)
        flight: dict[Future[tuple[Any, Any]], Any] = {}

        def fill() -> None:
            while len(flight) < 2 * self.split.workers and (task := next(todo, None)) is not None:
                key, args = task
                flight[self._pool.submit(_call_local, (method, key, args))] = key

        fill()
        while flight:
            done, _ = wait(flight, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                key = flight.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken = True
                    yield key, RuntimeError("the worker process died (out of memory?)")
            if broken:
                for key in list(flight.values()):
                    yield key, RuntimeError("the worker process died (out of memory?)")
                flight.clear()
                self._pool.shutdown(wait=False)
                self._pool = self._start()
            fill()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:  # Ctrl-C or an error: drop the items in progress (none was written)
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---- Ray ------------------------------------------------------------------------------------
class RayWorkers:
    """Ray actors, each a warm :class:`Worker` with ``num_cpus`` = its engine's threads.

    With no address (and no RAY_ADDRESS, or ``local``), Ray starts in this process on this
    machine and is shut down at the end; the models folder and the inputs are then read by
    path. On a cluster they travel through the object store: the models once, each input as
    its bytes. An address is checked first (:mod:`onnxstyle.workers.ray_address`): one that does not
    answer within ``timeout`` seconds is a one-line :class:`RayAddressError`, never a Ray retry loop.
    """

    def __init__(
        self, spec: WorkerSpec, threads: int, workers: int | None, address: str | None = None, ship: bool | None = None,
        timeout: float = ray_address.DEFAULT_TIMEOUT, verbose: bool = False,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("--ray needs Ray: pip install 'onnxstyle[ray]'") from None
        self.ray = ray
        self.started = False
        if not self.ray.is_initialized():
            self.started = _init_ray(self.ray, ray_address.resolve(address), timeout, verbose)
        # Paths are read where they are when every node is this machine; else files travel.
        self.local = not ship if ship is not None else _single_machine(self.ray)
        if not self.local:
            spec = _with_blobs(self.ray, spec)
        self.spec = spec
        total = int(self.ray.cluster_resources().get("CPU", 1))
        self.split = Split(workers or max(1, total // threads), threads)
        actor = self.ray.remote(Worker).options(num_cpus=threads)
        self.actors = [actor.remote(spec, threads) for _ in range(self.split.workers)]

    def __enter__(self) -> "RayWorkers":
        return self

    def map_unordered(self, method: str, tasks: Iterable[Task]) -> Iterator[tuple[Any, Any]]:
        """Two tasks queued per actor: one running, one ready the moment it finishes."""
        todo = iter(tasks)
        flight: dict[Any, tuple[Any, Any]] = {}

        def submit(actor: Any) -> None:
            task = next(todo, None)
            if task is not None:
                key, args = task
                flight[getattr(actor, method).remote(*args)] = (actor, key)

        for actor in self.actors:
            submit(actor)
            submit(actor)
        while flight:
            ready, _ = self.ray.wait(list(flight), num_returns=1)
            actor, key = flight.pop(ready[0])
            try:
                yield key, self.ray.get(ready[0])
            except self.ray.exceptions.RayError as e:  # the task or its actor failed
                yield key, e
            submit(actor)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


def _init_ray(ray: Any, address: ray_address.RayAddress, timeout: float, verbose: bool) -> bool:
    """Start or join Ray; True when started here (this process stops it at the end)."""
    logs = ray_address.init_kwargs(verbose)
    if address.local:
        # "local" said outright: with address None, Ray would join a RAY_ADDRESS in the environment.
        ray.init(address="local", num_cpus=physical_cores(), include_dashboard=False, **logs)
        return True
    ray_address.check(address, timeout)
    try:
        ray.init(address=address.for_ray(), **logs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:  # what ray.init raises for a head it cannot join
        raise ray_address.RayAddressError(f"Ray at {address.for_ray()} ({address.source}): {engine_message(e)}") from None
    return False


def _single_machine(ray: Any) -> bool:
    here = ray.util.get_node_ip_address()
    return all(n["NodeManagerAddress"] == here for n in ray.nodes() if n.get("Alive"))


def _with_blobs(ray: Any, spec: WorkerSpec) -> WorkerSpec:
    """The models folder's files in the object store, once, for actors on other machines."""
    import dataclasses

    folder = Path(spec.models.folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    # The files the manifest lists are the folder's contract; caches beside them stay behind.
    names = [MANIFEST, *(manifest.get("files") or GRAPHS)]
    blobs = {n: ray.put((folder / n).read_bytes()) for n in names}
    return dataclasses.replace(spec, models=ModelsSource(spec.models.folder, spec.models.fix, blobs))
