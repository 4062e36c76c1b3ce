"""One error type for every bad input, and the CLI wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable


class RecsysError(Exception):
    """A problem the user can fix (bad input, missing data or model); CLIs print it on one line."""


def cli(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI `main` so a RecsysError (or Ctrl-C) prints `error: ...` and returns 2, never a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except RecsysError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 2

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error: ...` line (exit 2) instead of a usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
