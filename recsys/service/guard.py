"""What every request passes before a handler: a bound on the body, the write token before the body is read,
JSON without duplicate keys, ids in plain digits, HEAD and OPTIONS, security headers, and an access log
that never shows a token.

`Guard` is the ASGI middleware around the whole app; `Guarded` the route class of every router (a dependency
marked `before_body` runs before the body is read, so an unauthenticated client never has its body read or
validated); `Id` the type of an id in a path or query.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi.routing import APIRoute
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 65_536  # 1,000 rated pairs take under 16 kB; parsing 64 kB of JSON takes milliseconds
MAX_ID = 2**63 - 1  # what a ratings database stores; a larger id is no one's
TOKEN_PARAMS = frozenset({"token", "access_token", "write_token", "auth", "authorization", "bearer", "key", "api_key"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# Swagger UI (/docs) starts from an inline script and draws with inline styles and data: images
DEFAULT_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# ids


def _plain_digits(value: Any) -> int:
    """An id as a path or query spells it: ASCII digits with an optional minus, within 64 bits. Python's
    `int` would also take `1_0`, ` 1`, `+1` and other scripts' digits; a 1e308 is never echoed back."""
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value) and abs(int(value)) <= MAX_ID:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_ID:
        return value
    raise PydanticCustomError("id", f"an id is whole digits within ±{MAX_ID}")


Id = Annotated[int, BeforeValidator(_plain_digits)]


# the body, the token, duplicate keys


class TooLarge(HTTPException):
    """A request body over the server's bound (413)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over this server's bound of {limit} bytes")


def before_body(check: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Mark a dependency `check(request)` to run (also) before the route reads its body: a refusal by it then
    never waits for, nor parses, the body."""
    check.before_body = True  # type: ignore[attr-defined]
    return check


def _unique(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        twice = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise _Duplicate(twice)
    return dict(pairs)


class _Duplicate(Exception):
    pass


class StrictJSON(Request):
    """A request whose JSON body may not name a key twice (`{"k": 1, "k": 2}` is refused, never read as 2)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body, object_pairs_hook=_unique)
            except _Duplicate as e:
                key = str(e.args[0])
                shown = key if len(key) <= 40 else key[:40] + "..."
                raise json.JSONDecodeError(f"the key {shown!r} is given twice", "", 0) from None
        return self._json


class Guarded(APIRoute):
    """A route whose `before_body` dependencies run before its body is read, and whose JSON is `StrictJSON`."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        early = [d.call for d in self.dependant.dependencies if getattr(d.call, "before_body", False)]

        async def guarded(request: Request):
            for check in early:
                check(request)
            return await handler(StrictJSON(request.scope, request.receive))

        return guarded


# the middleware


def page_csp(page: Path) -> str:
    """The page's Content-Security-Policy: its own inline scripts and styles by their hashes (read at start,
    so an edited page is covered at the next start), files of this server, nothing else inline, requests to this
    server only."""
    text = page.read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", text, re.S | re.I)
        digests = {base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks}
        return " ".join(["'self'", *(f"'sha256-{d}'" for d in sorted(digests))])

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


class Guard:
    """ASGI middleware: the body bound (a Content-Length over it, or a running count of a chunked body, is a
    413 when the app reads the body), HEAD answered as GET without a body, OPTIONS with 204 and `Allow`,
    a trailing slash read as none (no redirect, so no Host header is echoed), and security headers on every
    answer."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES, csp: dict[str, str] | None = None):
        self.app, self.max_body, self.csp = app, max_body, csp or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = dict(scope)
        path = scope["path"]
        if path.endswith("/") and path.strip("/"):
            scope["path"] = path.rstrip("/")
            if scope.get("raw_path"):
                scope["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
        send = self._headers(scope, send)
        if scope["method"] == "OPTIONS":
            send = _options(send)
        if scope["method"] == "HEAD":
            scope["method"], send = "GET", _bodiless(send)
        await self.app(scope, self._bounded(scope, receive), send)

    def _headers(self, scope: Scope, send: Send) -> Send:
        csp = self.csp.get(scope["path"], DEFAULT_CSP)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (SECURITY_HEADERS | {"Content-Security-Policy": csp}).items():
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        return with_headers

    def _bounded(self, scope: Scope, receive: Receive) -> Receive:
        limit, seen = self.max_body, 0
        length = Headers(scope=scope).get("content-length", "")

        async def bounded() -> Message:
            nonlocal seen
            if length.isascii() and length.isdigit() and int(length) > limit:
                raise TooLarge(limit)
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(limit)
            return message

        return bounded


def _options(send: Send) -> Send:
    """OPTIONS answered from the router's 405 for it: 204 with the same `Allow` (an unknown path stays 404)."""
    allowed = False

    async def options(message: Message) -> None:
        nonlocal allowed
        if message["type"] == "http.response.start" and message["status"] == 405:
            allowed = True
            headers = MutableHeaders(raw=[(k, v) for k, v in message["headers"] if k.lower() != b"content-length"])
            headers["Content-Length"] = "0"
            message = {**message, "status": 204, "headers": headers.raw}
        elif message["type"] == "http.response.body" and allowed:
            message = {**message, "body": b""}
        await send(message)

    return options


def _bodiless(send: Send) -> Send:
    async def head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return head


# the access log


def query_has_token(query: str) -> bool:
    """Whether a query string names a token-like parameter (`?token=...`)."""
    return any(name.lower() in TOKEN_PARAMS for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True))


class RedactTokens(logging.Filter):
    """An access-log filter: the value of a token-like query parameter is never written (`token=[redacted]`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            path, _, query = args[2].partition("?")
            if query_has_token(query):
                pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
                safe = [(k, "[redacted]" if k.lower() in TOKEN_PARAMS else v) for k, v in pairs]
                record.args = (*args[:2], f"{path}?{urllib.parse.urlencode(safe, safe='[]')}", *args[3:])
        return True
