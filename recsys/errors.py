"""One error type for every bad input, and the CLI wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

# what to install when an import fails: top-level module -> (what it is, the pip extra that brings it)
_INSTALLS = {
    "paddle": ("Paddle", "cpu"),
    "fastapi": ("FastAPI", "serve"),
    "fastapi_offline": ("fastapi-offline", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "starlette": ("FastAPI", "serve"),
    "pydantic": ("FastAPI", "serve"),
}
# what every command imports (the package's own dependencies), checked before a command imports any of them
DEPENDENCIES = ("numpy", "numba", "scipy", "matplotlib", "tqdm", "pyarrow", "threadpoolctl", "faiss")


class RecsysError(Exception):
    """A problem the user can fix (bad input, missing data or model); CLIs print it on one line."""


class UnknownId(RecsysError):
    """A user or movie id that the model's data does not have (the service answers 404)."""


def cli(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI `main` so a RecsysError (or Ctrl-C) prints `error: ...` and returns 2, never a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except RecsysError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except ModuleNotFoundError as e:
            print(f"error: {missing_module(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 2

    return wrapper


def missing_module(e: ModuleNotFoundError) -> str:
    """One line for an import that failed: what is missing, in which Python, and the command that installs it."""
    top = (e.name or "").split(".")[0]
    what, extra = _INSTALLS.get(top, (top or "a module", None))
    install = f'pip install -e ".[{extra}]"' if extra else 'pip install -e "."'
    return (
        f"{what} is not installed for {sys.executable} (no module named {e.name!r}): use the project's venv "
        f"(`make install`, then `. .venv/bin/activate`) or run `{install}` in the repository"
    )


def check_dependencies() -> None:
    """Before a command imports anything: one `error:` line naming the install command (exit 2) when one of
    the package's dependencies is not installed for this Python, instead of a traceback from deep inside."""
    import importlib.util

    for name in DEPENDENCIES:
        if importlib.util.find_spec(name) is None:
            print(f"error: {missing_module(ModuleNotFoundError(name=name))}", file=sys.stderr)
            raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error: ...` line (exit 2) instead of a usage block, and a flag is only
    its whole name (`--epoch 1` is an error, never taken as `--epochs`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False} | kwargs)

    raise_errors = False  # True: a bad flag raises RecsysError (a caller from Python), with the same text

    def error(self, message: str):
        if self.raise_errors:
            raise RecsysError(message)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def given(self, argv: list[str] | None = None) -> set[str]:
        """The destinations of the options written on the command line (not those left at their defaults)."""
        return set(vars(self.parse_args(argv, namespace=_Given())))


class _Given(argparse.Namespace):
    """A namespace that claims to have every attribute, so argparse fills in no defaults: what it holds
    after parsing is exactly what the command line gave."""

    def __getattr__(self, name: str):
        if name.startswith("_"):  # argparse's own bookkeeping
            raise AttributeError(name)
        return None
