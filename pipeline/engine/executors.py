"""Executors: where tasks run. In-process for debugging, a local process pool, or Dask distributed.

Every executor runs the same pure task functions, and a task's output depends only on its
input, so results are byte-identical whichever executor and worker count is used. Scale-out
is Dask's job: `--scheduler ADDRESS` reaches any existing cluster (dask-jobqueue, Kubernetes,
a hand-started `dask scheduler`).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.queues import SimpleQueue
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


class WorkerDied(RuntimeError):
    """A task's process ended without returning: a signal (the OOM killer, a segfault) or os._exit."""


class LocalExecutor(Executor):
    """A pool of spawned processes: safe with threads in the parent and the same on every OS.

    A process that dies breaks the whole pool and loses every task in it, so lost tasks are not
    failures: those that had started are suspects and rerun each alone in its own process, where
    only the culprit dies again (and is reported with its signal or exit code); those that had
    not started go back to a fresh pool. Workers announce each start on a queue to tell them apart.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._submissions = itertools.count()
        self._pool, self._starts = self._new_pool()

    def _new_pool(self) -> tuple[ProcessPoolExecutor, SimpleQueue]:
        context = multiprocessing.get_context("spawn")
        starts = context.SimpleQueue()  # a fresh one per pool: a dying pool may leave its lock held
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context,
                                   initializer=_remember_start_queue, initargs=(starts,))
        return pool, starts

    def map_unordered(self, fn, items, resources=None):
        waiting = list(items)
        while waiting:
            started, lost = yield from self._map_on_pool(fn, waiting)
            if not lost:
                return
            self._replace_broken_pool()
            if not started:  # no task could even start: the pool itself is broken, not a task
                for item in lost:
                    yield item, BrokenProcessPool("no worker process could start a task")
                return
            suspects = [item for key, item in lost if key in started]
            yield from run_each_alone(fn, suspects, self.workers)
            waiting = [item for key, item in lost if key not in started]

    def _map_on_pool(self, fn, items: list) -> Generator[tuple[Any, Any], None, tuple[set[int], list[tuple[int, Any]]]]:
        """Yields what finished; returns the keys of tasks that started and the (key, item) pairs a broken pool lost."""
        keyed = [(next(self._submissions), item) for item in items]

        def submit_all() -> dict[Future, tuple[int, Any]]:
            return {self._pool.submit(_announce_and_run, fn, key, item): (key, item) for key, item in keyed}

        try:
            futures = submit_all()
        except BrokenProcessPool:  # a worker died while idle (the OOM killer), since the last map
            self._replace_broken_pool()
            futures = submit_all()
        started: set[int] = set()
        lost: list[tuple[int, Any]] = []
        for future in as_completed(futures):
            started.update(_drain(self._starts))  # often, so workers never block on a full pipe
            try:
                result = future.result()
            except BrokenProcessPool:
                lost.append(futures[future])
                continue
            yield futures[future][1], result
        started.update(_drain(self._starts))
        return started & {key for key, _ in keyed}, lost

    def _replace_broken_pool(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._starts.close()
        self._pool, self._starts = self._new_pool()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._starts.close()


_start_queue: SimpleQueue | None = None


def _remember_start_queue(starts: SimpleQueue) -> None:
    global _start_queue
    _start_queue = starts


def _announce_and_run(fn: Callable[[Any], Any], key: int, item: Any) -> Any:
    _start_queue.put(key)  # written synchronously, so it is in the pipe even if fn ends the process
    return fn(item)


def _drain(starts: SimpleQueue) -> list[int]:
    keys = []
    while not starts.empty():
        keys.append(starts.get())
    return keys


def run_each_alone(fn: Callable[[Any], Any], items: list, workers: int) -> Iterator[tuple[Any, Any]]:
    """Run each item in a fresh spawned process of its own, `workers` at a time; a process that dies
    yields WorkerDied naming its signal or exit code, an exception fn raised is raised here, as a pool would."""
    context = multiprocessing.get_context("spawn")
    for start in range(0, len(items), workers):
        running = []
        for item in items[start:start + workers]:
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_run_and_send, args=(fn, item, sender))
            process.start()
            sender.close()  # so the receiver sees EOF when the child dies
            running.append((item, process, receiver))
        for item, process, receiver in running:
            try:
                succeeded, value = receiver.recv()
            except EOFError:
                process.join()
                yield item, WorkerDied(f"worker process died ({describe_exit(process.exitcode)})")
                continue
            finally:
                receiver.close()
            process.join()
            if not succeeded:
                raise value
            yield item, value


def _run_and_send(fn: Callable[[Any], Any], item: Any, sender: Connection) -> None:
    try:
        outcome = (True, fn(item))
    except BaseException as error:  # noqa: BLE001 - re-raised in the parent, as a pool's future would
        outcome = (False, error)
    sender.send(outcome)
    sender.close()


def describe_exit(exitcode: int | None) -> str:
    """'killed by SIGKILL' for a signal (multiprocessing reports it as a negative code), else 'exit code N'."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


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
