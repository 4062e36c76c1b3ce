"""How many threads this process's math runs on: one unless chosen.

A training step's products (batch 256 by a few hundred) are too small to share: a second thread buys nothing
on a quiet machine, and beside one busy process each product waits for the thread that lost its core (an epoch
3.5-5x slower on 2 cores). `use` sets the count for every pool the math runs on.
"""

from __future__ import annotations

import os
import sys

_chosen: int | None = None


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def chosen() -> int:
    """The count `use` set; before any, this process's usable cores (a library caller's lists of many users)."""
    return _chosen or usable_cores()


def use(threads: int) -> int:
    """Run the math on `threads` threads and return it: NumPy's BLAS, faiss's OpenMP pool (where loaded; it loads
    with OMP_NUM_THREADS=1, which importing Paddle sets), Numba's pool (where a parallel kernel started it) and the
    first stage's row pools; Paddle's own CPU ops stay on one (the fused step does the work)."""
    global _chosen
    import paddle
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)
    numba_pool = sys.modules.get("numba.np.ufunc.parallel")
    if numba_pool is not None and numba_pool._is_initialized:  # never started here: recsys has no parallel kernel
        numba_pool.set_num_threads(min(threads, numba_pool.config.NUMBA_NUM_THREADS))
    if hasattr(paddle.base.core, "set_num_threads"):
        paddle.base.core.set_num_threads(1)
    _chosen = threads
    return threads
