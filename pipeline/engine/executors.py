"""Executors: where tasks run. In-process for debugging, a local process pool, or Dask distributed.

Every executor runs the same pure task functions, and a task's output depends only on its
input, so results are byte-identical whichever executor and worker count is used. Scale-out
is Dask's job: `--scheduler ADDRESS` reaches any existing cluster (dask-jobqueue, Kubernetes,
a hand-started `dask scheduler`), and a `ClusterRequest` has dask-jobqueue start workers as Slurm jobs.
"""

from __future__ import annotations

import inspect
import itertools
import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.queues import SimpleQueue
from typing import Any, Literal

ExecutorKind = Literal["inprocess", "local", "dask"]
ClusterKind = Literal["slurm"]

# dask-jobqueue's class per batch scheduler, and the command that lists a scheduler's live jobs by id.
JOB_QUEUE_CLUSTERS: dict[str, str] = {"slurm": "SLURMCluster"}
LIVE_JOBS_COMMAND: dict[str, list[str]] = {"slurm": ["squeue", "--noheader", "--format=%i", "--jobs"]}
WORKER_WAIT_SECONDS = 600
QUEUE_POLL_SECONDS = 5  # how often the queue is asked whether jobs ended: batch schedulers ask for restraint


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


@dataclass(frozen=True)
class ClusterRequest:
    """Dask workers as batch jobs, started by dask-jobqueue: `jobs` jobs of the `kind` scheduler, each built from
    `options`, the keyword arguments of its cluster class (cores, memory, walltime, queue...)."""

    kind: ClusterKind
    jobs: int = 1
    options: dict[str, Any] = field(default_factory=dict)


class ClusterError(ValueError):
    """A batch cluster that cannot be built or whose workers never joined; `option` names the culprit, if one."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class DaskExecutor(Executor):
    """Dask distributed: a LocalCluster sized to the machine, an existing scheduler, or workers as batch jobs.

    Workers of every kind start under a nanny, which pins OpenBLAS, MKL and OpenMP to one thread, and each task
    pins the BLAS libraries again (native_threads), so batch-job workers write the same bytes as local ones.
    """

    def __init__(self, workers: int | None = None, scheduler: str | None = None,
                 cluster: ClusterRequest | None = None):
        from distributed import Client, LocalCluster

        self._cluster = None
        if scheduler:
            self._client = Client(scheduler, timeout="30s")
        elif cluster:
            self._cluster = start_job_queue_cluster(cluster)
            self._client = Client(self._cluster)
            try:
                wait_for_job_workers(self._client, self._cluster, cluster.kind)
            except BaseException:
                self.close()
                raise
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
        if resources and self._cluster is not None:
            self._check_offered(resources)
        # pure=False: a retried task is a new key, so the scheduler never reuses a failed result.
        futures = self._client.map(fn, items, pure=False, resources=resources or None)
        by_key = {future.key: item for future, item in zip(futures, items)}
        for future in dask_as_completed(futures):
            try:
                yield by_key[future.key], future.result()
            except Exception as error:  # noqa: BLE001 - e.g. KilledWorker after repeated worker deaths
                yield by_key[future.key], error
            future.release()

    def _check_offered(self, resources: dict[str, float]) -> None:
        """A cluster Gristmill started gets no more workers than it has: tasks needing a resource none of them
        offers (a GPU on a LocalCluster) would wait for ever, so say so instead. An existing scheduler's cluster
        may still grow, so it is not asked."""
        offered = [worker.get("resources", {}) for worker in self._client.scheduler_info()["workers"].values()]
        for name, amount in resources.items():
            if not any(worker.get(name, 0) >= amount for worker in offered):
                raise ClusterError(
                    f"tasks need {name}={amount:g} per worker and no worker of this cluster offers it; start workers "
                    f"with `dask worker --resources {name}=1` and pass --scheduler, or run with the default executor")

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def job_queue_cluster_class(kind: ClusterKind) -> type:
    """dask-jobqueue's cluster class for `kind`, imported only when asked for: it is an optional extra."""
    try:
        import dask_jobqueue
    except ImportError:
        raise ClusterError(f"dask-jobqueue is not installed: pip install 'gristmill[{kind}]'") from None
    return getattr(dask_jobqueue, JOB_QUEUE_CLUSTERS[kind])


def cluster_option_names(cluster_class: type) -> set[str]:
    """The keyword arguments a dask-jobqueue cluster takes, its job class's included (they reach the job through the
    cluster's **job_kwargs), so a misspelt option is named before any job is submitted."""
    names: set[str] = set()
    for owner in [cluster_class, *cluster_class.job_cls.__mro__]:
        if "__init__" in vars(owner):
            names |= {parameter.name for parameter in inspect.signature(owner.__init__).parameters.values()
                      if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)}
    return names - {"self", "scheduler", "name", "job_cls"}


def start_job_queue_cluster(request: ClusterRequest) -> Any:
    """The cluster with its jobs submitted. Jobs run this Python (dask-jobqueue's default for `python`, unless its
    config says otherwise), so workers import the same Gristmill."""
    cluster_class = job_queue_cluster_class(request.kind)
    known = cluster_option_names(cluster_class)
    for option in request.options:
        if option not in known:
            raise ClusterError(f"not an option of {cluster_class.__name__}", option)
    try:
        cluster = cluster_class(**request.options)
    except (TypeError, ValueError) as error:
        raise ClusterError(f"{cluster_class.__name__}: {' '.join(str(error).split())}") from None
    cluster.scale(jobs=request.jobs)
    return cluster


def wait_for_job_workers(client: Any, cluster: Any, kind: ClusterKind, timeout: float = WORKER_WAIT_SECONDS) -> None:
    """Until the workers of every job joined. A busy queue may hold jobs back, so after `timeout` the run goes on
    with the workers that came; none by then, or every job ended without one, is a ClusterError."""
    expected = len(cluster.plan)
    deadline = time.monotonic() + timeout
    next_queue_poll = time.monotonic() + 1
    while (joined := len(client.nthreads())) < expected:
        if joined == 0 and time.monotonic() > next_queue_poll:
            next_queue_poll += QUEUE_POLL_SECONDS
            if ended := ended_jobs(kind, cluster):
                jobs = f"{kind} job{'s' if len(ended) > 1 else ''} {', '.join(ended)}"
                raise ClusterError(f"{jobs} ended before a Dask worker joined; the job logs say why (log_directory, "
                                   "else the scheduler's output file of each job)")
        if time.monotonic() > deadline:
            if joined:
                return
            raise ClusterError(f"no Dask worker joined within {timeout:.0f} s; the {kind} queue may still hold the "
                               "jobs back (ask for fewer or smaller jobs, or another queue)")
        time.sleep(0.5)


def ended_jobs(kind: ClusterKind, cluster: Any) -> list[str]:
    """The cluster's job ids once every job has left the batch queue; empty while any is queued or running, or
    while that is unknown (a job not yet submitted, a queue command that fails)."""
    job_ids = [job.job_id for job in cluster.workers.values()]
    if not job_ids or None in job_ids:
        return []
    listing = subprocess.run([*LIVE_JOBS_COMMAND[kind], ",".join(job_ids)], capture_output=True, text=True,
                             timeout=60)
    ended = not listing.stdout.split() and (listing.returncode == 0 or "Invalid job id" in listing.stderr)
    return job_ids if ended else []


def make_executor(kind: ExecutorKind, workers: int | None = None, scheduler: str | None = None,
                  cluster: ClusterRequest | None = None) -> Executor:
    """`scheduler` or `cluster` make it Dask whatever `kind` says."""
    if scheduler or cluster:
        kind = "dask"
    if kind == "inprocess":
        return InProcessExecutor()
    if kind == "local":
        return LocalExecutor(workers or os.cpu_count() or 1)
    if kind == "dask":
        return DaskExecutor(workers, scheduler, cluster)
    raise ValueError(f"unknown executor {kind!r}; choose inprocess, local or dask")
