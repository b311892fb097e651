"""Executors: where tasks run. In-process for debugging, a local process pool, or Dask distributed.

Every executor runs the same pure task functions, and a task's output depends only on its
input, so results are byte-identical whichever executor and worker count is used. Scale-out
is Dask's job: `--scheduler ADDRESS` reaches any existing cluster (dask-jobqueue, Kubernetes,
a hand-started `dask scheduler`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal

ExecutorKind = Literal["inprocess", "local", "dask"]


class Executor:
    """Runs `fn` over items and yields (item, result) pairs as they finish.

    If the machinery loses a task (a worker process dies), the result is the exception, so
    the runner can retry it like any failed task. `resources` are the per-task needs a
    stage declares (e.g. {"GPU": 1}); only Dask acts on them.
    """

    workers: int = 1

    def map_unordered(
        self, fn: Callable[[Any], Any], items: Iterable[Any], resources: dict[str, float] | None = None
    ) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessExecutor(Executor):
    def map_unordered(self, fn, items, resources=None):
        for item in items:
            yield item, fn(item)


class LocalExecutor(Executor):
    """A pool of spawned processes: safe with threads in the parent and the same on every OS."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))

    def map_unordered(self, fn, items, resources=None):
        futures: dict[Future, Any] = {self._pool.submit(fn, item): item for item in items}
        broken = False
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except BrokenProcessPool as error:  # a worker died: every task in flight is lost
                broken = True
                yield futures[future], error
        if broken:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(Executor):
    """Dask distributed: a LocalCluster sized to the machine, or an existing scheduler."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None):
        from distributed import Client, LocalCluster

        self._cluster = None
        if scheduler:
            self._client = Client(scheduler, timeout="30s")
        else:
            self._cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,
            )
            self._client = Client(self._cluster)
        self.workers = len(self._client.scheduler_info()["workers"]) or (workers or 1)

    def map_unordered(self, fn, items, resources=None):
        from distributed import as_completed as dask_as_completed

        items = list(items)
        # pure=False: a retried task is a new key, so the scheduler never reuses a failed result.
        futures = self._client.map(fn, items, pure=False, resources=resources or None)
        by_key = {future.key: item for future, item in zip(futures, items)}
        for future in dask_as_completed(futures):
            try:
                yield by_key[future.key], future.result()
            except Exception as error:  # noqa: BLE001 - e.g. KilledWorker after repeated worker deaths
                yield by_key[future.key], error
            future.release()

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(kind: ExecutorKind, workers: int | None = None, scheduler: str | None = None) -> Executor:
    if scheduler and kind != "dask":
        kind = "dask"
    if kind == "inprocess":
        return InProcessExecutor()
    if kind == "local":
        return LocalExecutor(workers or os.cpu_count() or 1)
    if kind == "dask":
        return DaskExecutor(workers, scheduler)
    raise ValueError(f"unknown executor {kind!r}; choose inprocess, local or dask")
