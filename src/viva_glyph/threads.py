"""Thread control shared by the kernels: one BLAS thread, a row-piece pool.

OpenBLAS threads spin for a while after each call; run next to other compute
threads (the numba beam kernel, a second BLAS call) they steal their cores. The
fast paths therefore split rows into pieces, run the pieces on a small pool of
Python threads (numba kernels and BLAS release the GIL), and hold BLAS to one
thread meanwhile, as scikit-learn's k-means does. The pool has
:func:`default_threads` threads: the CPUs this process may use, or the
environment variable ``VIVA_GLYPH_NUM_THREADS``.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["default_threads", "parallel_map", "single_blas_thread"]

T = TypeVar("T")
R = TypeVar("R")


def default_threads() -> int:
    """Worker threads: ``VIVA_GLYPH_NUM_THREADS`` if set, else the usable CPUs.

    Raises
    ------
    ValueError
        If ``VIVA_GLYPH_NUM_THREADS`` is not a positive integer.
    """
    env = os.environ.get("VIVA_GLYPH_NUM_THREADS")
    if env is not None:
        if not env.strip().isdigit() or int(env) < 1:
            raise ValueError(f"VIVA_GLYPH_NUM_THREADS must be a positive integer, got {env!r}")
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_lock = threading.Lock()
_depth = 0
_saved: list[tuple[Any, int]] = []


def _blas_pools() -> tuple[Any, ...]:
    """threadpoolctl's controllers of the loaded BLAS libraries, rescanned after any
    import (numba's first kernel call, for one, loads SciPy's OpenBLAS)."""
    return _scan_blas(len(sys.modules))


@functools.lru_cache(maxsize=1)
def _scan_blas(modules: int) -> tuple[Any, ...]:
    try:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
    except ImportError:  # optional: only a speed matter
        return ()
    return tuple(c for c in ThreadpoolController().lib_controllers if c.user_api == "blas")


def _set_threads(pools: Sequence[tuple[Any, int]]) -> None:
    for pool, count in pools:
        pool.set_num_threads(count)
        # threadpoolctl >= 3.6 lets only one Python thread steer OpenBLAS: hand
        # control back at once, so whichever thread restores the limit can.
        release = getattr(type(pool), "clear_controlling_thread", None)
        if release is not None:
            release()


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Hold BLAS to one thread inside the block (no-op without threadpoolctl).

    The limit is process-wide, so nested and concurrent blocks share it: the
    first block to enter sets it and the last to leave restores the original.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = [(pool, pool.get_num_threads()) for pool in _blas_pools()]
            _set_threads([(pool, 1) for pool, _ in _saved])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set_threads(_saved)


def parallel_map(fn: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    """``[fn(item) for item in items]``, on up to ``threads`` threads with one BLAS thread.

    With one thread or one item it runs inline and leaves BLAS alone.
    Exceptions of ``fn`` propagate; results keep the order of ``items``.
    """
    threads = min(threads, len(items))
    if threads <= 1 or getattr(_worker, "active", False):  # nested calls run inline
        return [fn(item) for item in items]
    with single_blas_thread():
        return list(_pool(threads).map(fn, items))


_worker = threading.local()
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_pid = os.getpid()
_pools_lock = threading.Lock()


def _mark_worker() -> None:
    _worker.active = True


def _pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` workers, made on first use and kept (a pool per
    call cost a fit some 600 thread starts). A forked child makes its own."""
    global _pools_pid
    with _pools_lock:
        if _pools_pid != os.getpid():  # the parent's worker threads do not exist here
            _pools.clear()
            _pools_pid = os.getpid()
        pool = _pools.get(threads)
        if pool is None:
            pool = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="viva-glyph", initializer=_mark_worker
            )
            _pools[threads] = pool
        return pool
