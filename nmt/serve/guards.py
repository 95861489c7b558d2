"""What stands between the network and the routes: the JSON error every refusal uses, the request-body limit
(size and UTF-8) and the API-key check.

The body is read here, before any route or JSON parser sees it, so that memory per request is bounded by
`--max-body-bytes` whatever the client declares or sends.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# How much of an oversized body is read and dropped before answering 413. Answering while the client is still
# sending makes many clients see a reset instead of the answer; reading on costs bandwidth, not memory.
DRAIN_LIMIT = 64 * 1024 * 1024


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: object
                   ) -> JSONResponse:
    """`{"error": {"status": ..., "message": ..., ...}}`: the one shape of every refusal."""
    return JSONResponse({"error": {"status": status, "message": message, **extra}}, status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 and one that is not UTF-8 (JSON must
    be, RFC 8259) 400, before the app runs; a good body is handed on whole."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        size = int(declared) if declared.isdigit() else 0
        body = bytearray()
        ended = False
        if size <= self.max_bytes:
            state = await _read(body, receive, self.max_bytes)
            if state == "gone":
                return
            ended, size = state == "ended", max(size, len(body))
        if size > self.max_bytes:
            if not ended:
                await _drain(receive, DRAIN_LIMIT)
            await error_response(413, f"request body of {size} bytes or more is over the limit of "
                                 f"{self.max_bytes} bytes (max_body_bytes)", limit=self.max_bytes)(
                scope, receive, send)
            return
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError as err:
            await error_response(400, f"request body is not valid UTF-8 (byte {err.start})")(scope, receive, send)
            return
        await self.app(scope, _replay(bytes(body), receive), send)


async def _read(body: bytearray, receive: Receive, limit: int) -> str:
    """Read the body into `body` until it ends ("ended"), passes `limit` ("over") or the client goes away
    ("gone")."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return "gone"
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return "ended"
        if len(body) > limit:
            return "over"


async def _drain(receive: Receive, limit: int) -> None:
    read = 0
    while read <= limit:
        message = await receive()
        read += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: only a disconnect can come

    return replay


def key_matches(header: str | None, api_key: str) -> bool:
    """Whether an Authorization header carries `Bearer API_KEY`, compared in constant time: both sides are
    hashed first, so that neither the key's characters nor its length show in the time taken."""
    if header is None or not header.startswith("Bearer "):
        return False
    given = hashlib.sha256(header[len("Bearer "):].encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(given, hashlib.sha256(api_key.encode("utf-8")).digest())
