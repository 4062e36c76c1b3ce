"""Serve a model dir over HTTP: `python -m recsys.serve --model-dir DIR [--rerank RANKING_DIR] [--port 8000]`.

A JSON API that mirrors `recsys.infer --json` (OpenAPI docs at /docs) and a small web page at `/`.
Model dirs load once at start; every `--reload-interval` seconds a background thread looks for a newer
save (a training run swaps the dir) and loads it whole before switching, so a request is answered by one
pair of model dirs from start to end. Request bodies are bounded (`--max-body-bytes`), idle connections
closed (`--idle-timeout`), and the write token must be long and private (`--write-token-file`, mode 0600).
Needs the `serve` extra: `pip install -e ".[serve]"`.
"""

from __future__ import annotations

import argparse
import copy
import os
import stat
import sys

from recsys import modelflags
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.topn import nearest

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "RECSYS_WRITE_TOKEN"
MIN_TOKEN = 16  # characters: `python -c 'import secrets; print(secrets.token_urlsafe(24))'` writes 32
MAX_BODY_BYTES = 65_536  # as recsys.service.guard.MAX_BODY_BYTES (this module imports no FastAPI)
IDLE_TIMEOUT = 5.0


def create_app(*args, **kwargs):
    """`recsys.service.api.create_app` (the FastAPI application; with `ratings_db`, it takes ratings from clients
    that send `write_token`), imported on first use: the serve extra is optional."""
    from recsys.service import api

    return api.create_app(*args, **kwargs)


def write_token(token_file: str | None) -> str | None:
    """The write token: the file's first line, else $RECSYS_WRITE_TOKEN, else None (writes are off). The file
    must be readable by its owner alone, and the token at least `MIN_TOKEN` printable ASCII characters."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                mode, token = os.fstat(f.fileno()).st_mode, f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or e
            raise RecsysError(f"cannot read --write-token-file {token_file}: {why}") from None
        if mode & 0o077:
            raise RecsysError(f"--write-token-file {token_file} is readable by others (mode "
                              f"{stat.S_IMODE(mode):04o}): chmod 600 {token_file}")  # fmt: skip
        return _checked(token, f"--write-token-file {token_file}")
    token = os.environ.get(TOKEN_ENV, "").strip()
    return _checked(token, f"${TOKEN_ENV}") if token else None


def _checked(token: str, where: str) -> str:
    """A token as given, or a one-line error saying why it cannot serve as one."""
    if not token or any(c.isspace() for c in token):
        raise RecsysError(f"{where} must hold one token, without blanks")
    if not (token.isascii() and token.isprintable()):
        raise RecsysError(f"{where} must be printable ASCII (a header carries it)")
    if len(token) < MIN_TOKEN:
        raise RecsysError(f"{where} holds a token of {len(token)} characters; use at least {MIN_TOKEN} (python -c "
                          "'import secrets; print(secrets.token_urlsafe(24))')")  # fmt: skip
    return token


def log_config() -> dict:
    """uvicorn's logging, with a filter that keeps token-like query parameters out of the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": "recsys.service.guard.RedactTokens"}
    config["handlers"]["access"].setdefault("filters", []).append("redact_tokens")
    return config


def served(rec) -> str:
    """Every model a server answers from, for its start-up line."""
    stages = [f"{rec.model.path} ({rec.model.objective})"]
    if rec.rerank is not None:
        stages.append(f"reranked by {rec.rerank.path} ({rec.rerank.objective})")
    return " ".join(stages)


def one_thread_per_request() -> None:
    """A request's products are small: BLAS and faiss threads only contend with each other (and with the next
    request) on them, so the server computes each request on one thread (`benchmarks/scale.py` prints a
    two-stage top-10 for one user both ways)."""
    import threadpoolctl

    threadpoolctl.threadpool_limits(1, user_api="blas")
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(1)


@cli
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m recsys.serve", description=__doc__.split("\n\n")[0])
    modelflags.add(ap, "k")
    ap.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    ap.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    ap.add_argument(
        "--reload-interval", type=float, default=2.0, help="seconds between looks for a newer save (0: never)"
    )
    ap.add_argument(
        "--ratings-db",
        metavar="PATH_OR_URL",
        help="take ratings and new users (POST /api/ratings, /api/users) into this SQLite file (made if missing) "
        "or, shared by several servers, a PostgreSQL database (postgresql://USER@HOST/DB; pip install "
        "'psycopg[binary]')",
    )
    ap.add_argument(
        "--write-token-file",
        metavar="FILE",
        help=f"the token that writes must send as Authorization: Bearer TOKEN: at least {MIN_TOKEN} printable ASCII "
        f"characters, in a file only its owner may read (chmod 600) (default: ${TOKEN_ENV}; none: writes answer 403)",
    )
    ap.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        help="a request body over this many bytes is answered 413 before it is read (default: %(default)s)",
    )
    ap.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        help="seconds an idle keep-alive connection stays open (default: %(default)s)",
    )
    ap.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="info: one line per request; warning: problems only (default: %(default)s)",
    )
    args: argparse.Namespace = ap.parse_args(argv)
    if not 0 < args.port < 65536:
        ap.error(f"--port must be 1..65535, got {args.port}")
    modelflags.check(ap, args)
    if args.reload_interval < 0:
        ap.error(f"--reload-interval must not be negative, got {args.reload_interval}")
    if args.max_body_bytes < 1:
        ap.error(f"--max-body-bytes must be at least 1, got {args.max_body_bytes}")
    if not args.idle_timeout > 0:
        ap.error(f"--idle-timeout must be positive, got {args.idle_timeout}")
    token = write_token(args.write_token_file)
    if args.ratings_db is not None and token is None and args.host not in LOOPBACK:
        ap.error(f"--ratings-db on --host {args.host} needs a write token (--write-token-file FILE or ${TOKEN_ENV})")
    import uvicorn  # the serve extra: a missing one is a one-line error naming the install command

    search = nearest.search_for(args.exact)
    app = create_app(args.model_dir, args.rerank, args.reload_interval, args.candidates, search, args.ratings_db, token,
                     args.max_body_bytes)  # fmt: skip
    one_thread_per_request()
    print(f"serving {served(app.state.holder.current)} on http://{args.host}:{args.port}/ (API docs at /docs)",
          flush=True)  # fmt: skip
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, log_config=log_config(),
                    timeout_keep_alive=args.idle_timeout)  # fmt: skip
    except OSError as e:
        raise RecsysError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
