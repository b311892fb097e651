"""Run tasks with native BLAS thread pools pinned to one thread, so their numbers do not depend on the machine.

OpenBLAS splits a matrix-vector product between its threads differently for each thread count, which
changes float rounding (py3langid's scores among them). Dask's nanny starts workers with one BLAS thread,
a local pool gets one per core: unpinned, the same task would write different bytes on each executor.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController, threadpool_limits


class _BlasPin:
    """One pin per process, held while any task runs: tasks running side by side on a Dask worker's
    threads must not restore the pool size under one another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks = 0
        self._outermost: threadpool_limits | None = None

    def enter(self) -> None:
        with self._lock:
            if self._tasks == 0:
                self._outermost = threadpool_limits(limits=1, user_api="blas")
            else:  # a BLAS library loaded by an earlier task's stage since the outermost pin
                ThreadpoolController().limit(limits=1, user_api="blas")
            self._tasks += 1

    def leave(self) -> None:
        with self._lock:
            self._tasks -= 1
            if self._tasks == 0 and self._outermost is not None:
                self._outermost.restore_original_limits()
                self._outermost = None


_PIN = _BlasPin()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Pin every loaded BLAS library (OpenBLAS, MKL, BLIS) to one thread; restored when the last task ends."""
    _PIN.enter()
    try:
        yield
    finally:
        _PIN.leave()
