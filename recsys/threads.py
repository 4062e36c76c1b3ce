"""How many threads this process's math runs on: one for a training step, what pays for large products.

A training step's products (batch 256 by a few hundred) are too small to share: a second thread buys nothing
on a quiet machine, and beside one busy process each product waits for the thread that lost its core (an epoch
3.5-5x slower on 2 cores). `use` sets the count for every pool the math runs on. The phases whose products are
large (full-catalogue scoring, item-item weights, many users' lists, the baselines' fits) run inside `phase`,
on `wide()` threads: the faster of one and all usable cores on a short product timed when first asked
(`measure`), so that a machine whose other cores are busy keeps them on one.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_chosen: int | None = None  # the count the math runs on now (None: the libraries' own)
_wide: int | None = None  # the count of large products: measured once (`wide`), or set (`set_wide`)
_open = 0  # phases open: a phase inside one keeps its count
PAYS = 0.8  # all cores are kept when they take at most this share of one thread's time on the measured product
PRODUCT = (1024, 128, 2048)  # the measured product, float32 [m, k] @ [k, n]: about 7 ms on one core


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def chosen() -> int:
    """The count the math runs on now (`use`, or the open `phase`'s); before any, this process's usable cores."""
    return _chosen or usable_cores()


def use(threads: int) -> int:
    """Run the math on `threads` threads and return it: NumPy's and SciPy's BLAS, faiss's OpenMP pool (where
    loaded; it loads with OMP_NUM_THREADS=1, which importing Paddle sets), Numba's pool (where a parallel kernel
    started it) and the first stage's row pools; Paddle's own CPU ops stay on one (the fused step does the work)."""
    global _chosen
    import scipy.linalg  # noqa: F401 (its own BLAS, loaded now so that the count holds for it too)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)
    numba_pool = sys.modules.get("numba.np.ufunc.parallel")
    if numba_pool is not None and numba_pool._is_initialized:  # never started here: recsys has no parallel kernel
        numba_pool.set_num_threads(min(threads, numba_pool.config.NUMBA_NUM_THREADS))
    paddle = sys.modules.get("paddle")  # where loaded: a phase of a process without Paddle does not load it
    if paddle is not None and hasattr(paddle.base.core, "set_num_threads"):
        paddle.base.core.set_num_threads(1)
    _chosen = threads
    return threads


def measure(repeat: int = 5) -> int:
    """1 or all usable cores, whichever computes `PRODUCT` faster (median of `repeat` alternating tries; all
    cores must take at most `PAYS` of one thread's time): 0.1-0.3 s."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    cores = usable_cores()
    if cores == 1:
        return 1
    m, k, n = PRODUCT
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    times: dict[int, list[float]] = {1: [], cores: []}
    for i in range(repeat + 1):  # the first round wakes the threads up
        for count in (1, cores):
            with threadpool_limits(count, user_api="blas"):
                start = time.perf_counter()
                a @ b
                if i:
                    times[count].append(time.perf_counter() - start)
    return cores if statistics.median(times[cores]) <= PAYS * statistics.median(times[1]) else 1


def wide() -> int:
    """The count large products run on: `set_wide`'s, else `measure`d the first time it is asked."""
    global _wide
    if _wide is None:
        _wide = measure()
    return _wide


def set_wide(threads: int | None) -> None:
    """Run large products on `threads` threads from now on (None: measure again when next asked)."""
    global _wide
    if threads is not None and not 1 <= threads <= usable_cores():
        raise ValueError(f"threads must be 1..{usable_cores()}, got {threads}")
    _wide = threads


@contextmanager
def phase(threads: int | None = None) -> Iterator[int]:
    """Run the block's math on `threads` threads (None: an enclosing phase's count, else `wide()`), then on the
    counts it ran on before (every pool `use` sets). Yields the count. The counts are the process's: phases in
    several Python threads at once would mix them."""
    global _chosen, _open
    from threadpoolctl import threadpool_limits

    count = threads if threads is not None else (chosen() if _open else wide())
    if count == _chosen:  # the count in effect already: nothing to set, nothing to restore (each costs ms)
        _open += 1
        try:
            yield count
        finally:
            _open -= 1
        return
    before, faiss = _chosen, sys.modules.get("faiss")
    faiss_before = faiss.omp_get_max_threads() if faiss is not None else None
    import scipy.linalg  # noqa: F401 (loaded before the snapshot: its BLAS's count comes back too)

    limits = threadpool_limits(None, user_api="blas")  # a snapshot: what `restore_original_limits` returns to
    use(count)
    _open += 1
    try:
        yield count
    finally:
        _open -= 1
        limits.restore_original_limits()
        if faiss_before is not None:
            faiss.omp_set_num_threads(faiss_before)
        numba_pool = sys.modules.get("numba.np.ufunc.parallel")
        if numba_pool is not None and numba_pool._is_initialized:
            numba_pool.set_num_threads(min(before or usable_cores(), numba_pool.config.NUMBA_NUM_THREADS))
        _chosen = before
