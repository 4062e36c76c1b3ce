"""The code blocks of the README and the documentation that are marked runnable.

A block is marked by an HTML comment on the line before its fence, invisible on GitHub and on the site:

- `<!-- runnable -->`: tests/test_docs.py runs it as written, in an empty folder, offline;
- `<!-- runnable: NAME -->`: the test that knows what the block needs (a server, a model, real data) finds it
  by NAME with `block(NAME)` and runs it (tests/test_docs.py checks that every NAME has its test)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^<!-- runnable(?::\s*([\w-]+))? -->\n```(\w+)\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    path: Path
    name: str | None  # None: runnable as written, by tests/test_docs.py
    language: str
    text: str

    def commands(self) -> list[str]:
        """A shell block's command lines, comments and blank lines left out."""
        return [line for line in self.text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def documents() -> list[Path]:
    """The README and every page of the documentation."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks() -> list[Block]:
    """Every block marked runnable, in the README, then the pages in path order."""
    out = []
    for path in documents():
        for m in FENCE.finditer(path.read_text()):
            out.append(Block(path, m.group(1), m.group(2), m.group(3)))
    return out


def block(name: str) -> Block:
    """The one block marked `<!-- runnable: NAME -->`."""
    found = [b for b in blocks() if b.name == name]
    assert len(found) == 1, f"{len(found)} blocks are marked runnable: {name}"
    return found[0]
