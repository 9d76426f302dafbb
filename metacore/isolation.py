"""Sharing one server among many sessions: native-heavy work (t-SNE, PCA) in worker processes, so a crash
there costs one request, not the server; and one slot for the in-process tensor work of all sessions.

A segfault in native code cannot be caught in the process it happens in; in a worker it breaks only
that worker's pool, which is replaced. The pool is bounded and shared by every caller (every browser
session of a lab server), so heavy requests queue instead of piling onto the cores.

`compute_slot()` is held for one short piece of work at a time (one inner step, a few images' features):
sessions take turns in the order they asked (threading's waiters are woken first come, first served), so a
session extracting 200 photos' features delays another's Step by one piece, not by all of it.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TypeVar

from metacore.errors import MetacoreError

T = TypeVar("T")
WORKERS = 1  # one map at a time, single-threaded: the cores stay free for every session's Step

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()
_compute = threading.Semaphore(1)  # torch already spreads one piece of work over every core


@contextmanager
def compute_slot() -> Iterator[None]:
    """Hold the server's compute slot for one short piece of tensor work (never across a `yield` to a page)."""
    with _compute:
        yield


class WorkerCrashed(MetacoreError):
    """The worker process died while computing (e.g. a segfault in native code)."""


def _current_pool() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:  # spawn: a fresh interpreter, no forked copy of the server's threads and locks
            _pool = ProcessPoolExecutor(
                WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread
            )
        return _pool


def _one_thread() -> None:
    """In a worker: native libraries (OpenMP, BLAS) use one thread, not one per core."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def run_isolated(fn: Callable[..., T], *args, timeout: float = 300.0, what: str = "the computation") -> T:
    """`fn(*args)` in a worker process. `fn` must be a module-level function; its MetacoreError passes through.

    A crashed worker is replaced and the request retried once (the crash may have been another
    request's); a second crash raises WorkerCrashed with one sentence for the user.
    """
    for _ in range(2):
        pool = _current_pool()
        try:
            return pool.submit(fn, *args).result(timeout)
        except BrokenProcessPool:
            _discard(pool)
        except FutureTimeout:
            raise MetacoreError(f"{what} took longer than {timeout:.0f} s and was abandoned") from None
    raise WorkerCrashed(f"{what} crashed its worker process (the server is fine); try other settings or images")


def shutdown() -> None:
    """Stop the worker processes (they also stop with the parent)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
