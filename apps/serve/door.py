"""What every request passes before a route sees it, and what any failure is answered with.

A web page the user visits can send requests to a server on this machine: it can re-point its own
name at 127.0.0.1 (DNS rebinding) or POST a form or text/plain body, which browsers send cross-site
without asking. So the door refuses a Host header that does not name this server, a POST whose body
is not declared JSON, and every CORS preflight (no response carries Access-Control-Allow-Origin).
Bodies are read with a size cap and their nesting depth is counted on the bytes before they are
parsed. Whatever goes wrong answers in OpenAI's error format, with one line in the log.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse

from apps.serve.protocol import ApiError
from pipeline.listen import host_refusal

# An OpenAI request nests about four deep (messages -> a message -> content parts -> a part); this is
# far above any real one and far below the recursion that would make the JSON parser fail.
MAX_JSON_DEPTH = 64
# A JSON string, escapes included; an unterminated one runs to the end (so a scan never restarts inside it).
JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
# Brackets as steps of depth: [ and { one level in (1), ] and } one out (0xff, -1 as int8), the rest gone.
BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")

log = logging.getLogger("uvicorn.error")  # uvicorn's own log: the line looks like its others


def json_depth(body: bytes) -> int:
    """How deep the JSON in `body` (UTF-8) nests, counted without parsing: brackets outside strings.
    Linear in the body's length, with no recursion whatever the input."""
    brackets = JSON_STRING.sub(b"", body).translate(None, NOT_BRACKETS).translate(BRACKET_STEPS)
    return int(np.cumsum(np.frombuffer(brackets, dtype=np.int8), dtype=np.int64).max(initial=0))


async def read_json(request: Request, limit: int):
    """The body as JSON, refusing to read more than `limit` bytes or to parse nesting deeper than
    MAX_JSON_DEPTH (Python's parser recurses once per level)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes; this server accepts at most {limit}",
                       code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes, the most this server accepts",
                           code="request_too_large")
    try:
        text = body.decode("utf-8-sig")  # JSON on the wire is UTF-8; decoded first, so the scan below is exact
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not UTF-8: {e}") from None
    depth = json_depth(bytes(body))
    if depth > MAX_JSON_DEPTH:
        raise ApiError(400, f"the request body nests {depth} levels deep; this server reads at most "
                            f"{MAX_JSON_DEPTH}", code="json_too_deep")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    try:  # JSON may escape half a surrogate pair (\ud800 alone): no text, and the tokenizer fails on it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the request body has an unpaired surrogate escape (\\ud800 to \\udfff alone): "
                            "send valid Unicode text") from None
    return data


def refusal(scope: dict, host: str) -> ApiError | None:
    """Why the door turns this request away before any route sees it, or None."""
    headers = Headers(scope=scope)
    why_not = host_refusal(headers.get("host"), host, "--host")
    if why_not:
        return ApiError(400, why_not, code="unexpected_host")
    if scope["method"] == "OPTIONS":
        return ApiError(405, "OPTIONS: this server allows no cross-origin requests (it sends no CORS headers); "
                             "call it from the same origin or from a program", code="cors_not_allowed")
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if scope["method"] == "POST" and media_type != "application/json":
        return ApiError(415, f"send the body as JSON with the header Content-Type: application/json "
                             f"(got {media_type or 'none'!r})", code="unsupported_media_type")
    return None


class Door:
    """ASGI middleware around the app: the checks above, then the app; an exception anywhere in it
    becomes a JSON 500 (or, mid-stream, a last error event) and one line in the log."""

    def __init__(self, app, host: str):
        self.app, self.host = app, host

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = refusal(scope, self.host)
        if refused:
            return await JSONResponse(refused.body(), status_code=refused.status)(scope, receive, send)
        sent = {"started": False, "ended": False, "stream": False}

        async def watched_send(message):
            if message["type"] == "http.response.start":
                sent["started"] = True
                sent["stream"] = b"text/event-stream" in dict(message.get("headers", [])).get(b"content-type", b"")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                sent["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as e:  # noqa: BLE001 (any failure: the client gets an answer, the log one line)
            log.error("%s %s failed: %s: %s", scope["method"], scope["path"], type(e).__name__, e)
            error = ApiError(500, f"the server failed on this request ({type(e).__name__}); it keeps serving",
                             kind="server_error")
            if not sent["started"]:
                return await JSONResponse(error.body(), status_code=500)(scope, receive, send)
            if not sent["ended"]:  # headers are out: end the stream with the error as its last event
                tail = ("data: " + json.dumps(error.body()) + "\n\n").encode() if sent["stream"] else b""
                try:
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
                except Exception:  # noqa: BLE001 (the client has gone; nothing left to tell)
                    pass
