"""The flags that `infer`, `evaluate` and `serve` share: which model dirs answer, and how the first stage searches."""

from __future__ import annotations

import argparse

from recsys.topn import nearest

DEFAULT_MODEL_DIR = "recommender_system.inference.model"


def add(ap: argparse.ArgumentParser, k: str) -> None:
    """Add --model-dir, --rerank, --candidates and --exact to `ap`; `k` names the command's list length (a
    larger one widens the candidates to it)."""
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="default: %(default)s")
    ap.add_argument(
        "--rerank",
        metavar="RANKING_DIR",
        help="with a retrieval --model-dir: reorder its candidates by this ranking network (or rating model)",
    )
    ap.add_argument(
        "--candidates",
        type=int,
        help="with --rerank: retrieval candidates (default: the number the ranking model was trained on, 100 "
        f"for a rating model; a larger {k} widens them to {k})",
    )
    ap.add_argument("--exact", action="store_true", help=nearest.EXACT_HELP)


def check(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One `error:` line (exit 2) for a bad value of the shared flags."""
    if args.candidates is not None and args.candidates < 1:
        ap.error(f"--candidates must be at least 1, got {args.candidates}")
