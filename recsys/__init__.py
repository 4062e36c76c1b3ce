"""recsys: the PaddlePaddle Book's chapter 05 recommender (MovieLens fusion model) on current Paddle."""

import os as _os
import warnings as _warnings

__version__ = "0.1.0"


def _select_mkl_kernels() -> None:
    """Paddle's bundled MKL takes a slow generic path on AMD processors; `MKL_DEBUG_CPU_TYPE=5` selects its
    AVX2 kernels (2.5-4x faster matmuls measured on an AMD EPYC). MKL reads it when it loads, so this runs
    before recsys first imports paddle. Intel processors, and a value already set, are left alone."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            if "AuthenticAMD" in f.read(4096):
                _os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    except OSError:
        pass


_select_mkl_kernels()
# Threads that wait for work sleep at once instead of spinning, so a neighbour's process keeps its core: OpenMP's
# (faiss; Paddle's Intel runtime), and OpenBLAS's workers (2**4 cycles, not the 2**28 they spin by default).
# The libraries read these when they load, so this runs before recsys first imports them; a value set stays.
for _key, _value in (("OMP_WAIT_POLICY", "PASSIVE"), ("KMP_BLOCKTIME", "0"), ("OPENBLAS_THREAD_TIMEOUT", "4")):
    _os.environ.setdefault(_key, _value)
# Paddle's C++ logging and a compiler-cache notice would drown the chapter's own output.
_os.environ.setdefault("GLOG_minloglevel", "2")
_warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

__all__ = ["Recommender", "RecsysError", "UnknownId", "__version__"]


def __getattr__(name: str):
    """`recsys.Recommender` and the errors, imported on first use (Paddle only where a model runs)."""
    if name in ("Recommender", "UnknownId"):
        from recsys import recommender

        return getattr(recommender, name)
    if name == "RecsysError":
        from recsys.errors import RecsysError

        return RecsysError
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")


def _check_dependencies() -> None:
    """A command (`python -m recsys.NAME`, whose argv[0] is "-m" while this package loads, or a `recsys-NAME`
    script) says in one line what is not installed, before its own imports would end in a traceback."""
    import sys

    if sys.argv[:1] == ["-m"] or _os.path.basename(sys.argv[0] if sys.argv else "").startswith("recsys-"):
        from recsys.errors import check_dependencies

        check_dependencies()


_check_dependencies()
