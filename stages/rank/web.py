"""The labeling page's server: a small FastAPI app over one LabelingSession, served by uvicorn.

The page (page/*.html, .js, .css, no build step, nothing fetched from the internet) talks to a JSON API:
  GET  /api/state              who, progress, the ranked prompts (for "back"), the first unranked prompt
  GET  /api/prompt/{id}        one prompt, its answers in display order, the earlier ranking if any
  GET  /api/next?after=ID      the next unranked prompt after ID (skip)
  POST /api/rank               {"prompt_id", "ranking", "all_bad"?}: appended to the labels file at once
  POST /api/finish             stop serving ("finish for now")
A bad request gets a 4xx with {"error": "..."} and changes nothing; the server keeps serving.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from data.labels import BadRanking
from pipeline.listen import host_refusal
from stages.rank.session import LabelingSession, UnknownPrompt

PAGE_DIR = Path(__file__).with_name("page")
PAGE_FILES = {"/": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
MAX_BODY_BYTES = 16 * 1024  # a ranking is a few dozen bytes; anything near this is not one
RANK_KEYS = {"prompt_id", "ranking", "all_bad"}


def refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def json_body(request: Request) -> dict:
    """The request's JSON object, read with a size cap (the declared length and the bytes actually sent)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        # also keeps other web sites out: a cross-site form cannot send application/json without CORS
        raise Refused(415, "send the ranking as JSON with Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise Refused(413, f"request body too large (limit {MAX_BODY_BYTES} bytes); a ranking is a short JSON object")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Refused(413, f"request body too large (limit {MAX_BODY_BYTES} bytes); a ranking is a short JSON object")
    try:
        data = json.loads(body)
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise Refused(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise Refused(400, 'the body must be a JSON object like {"prompt_id": "p1", "ranking": [2, 0, 1]}')
    return data


def build_app(session: LabelingSession, stop, host: str = "127.0.0.1") -> FastAPI:
    """The app, listening on `host`; `stop()` ends serving (finish button, or every prompt ranked)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def only_this_server(request: Request, call_next):
        # a web page whose name is re-pointed at 127.0.0.1 (DNS rebinding) must not read or write labels
        refusal = host_refusal(request.headers.get("host"), host, "rank.host")
        if refusal:
            return refuse(400, refusal)
        return await call_next(request)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused):
        return refuse(exc.status, exc.message)

    def page_file(name: str):
        async def serve_file():
            return FileResponse(PAGE_DIR / name, headers={"Cache-Control": "no-store"})
        return serve_file

    for route, name in PAGE_FILES.items():
        app.add_api_route(route, page_file(name), methods=["GET"], include_in_schema=False)

    @app.get("/api/state")
    async def state():
        return {"labeler": session.labeler, "progress": session.progress(), "recent": session.recent(),
                "next": session.next_unranked()}

    @app.get("/api/prompt/{prompt_id}")
    async def prompt(prompt_id: str):
        try:
            return {**session.view(prompt_id), "progress": session.progress()}
        except UnknownPrompt:
            return refuse(404, f"unknown prompt_id {prompt_id!r}")

    @app.get("/api/next")
    async def next_prompt(after: str | None = None):
        return {"next": session.next_unranked(after), "progress": session.progress()}

    @app.post("/api/rank")
    async def rank(request: Request):
        data = await json_body(request)
        extra = sorted(set(data) - RANK_KEYS)
        if extra or "prompt_id" not in data or "ranking" not in data:
            raise Refused(422, 'expected {"prompt_id": ..., "ranking": [...], "all_bad": false}'
                          + (f"; unexpected key(s): {', '.join(extra)}" if extra else ""))
        if not isinstance(data.get("all_bad", False), bool):
            raise Refused(422, '"all_bad" must be true or false')
        try:
            session.submit(data["prompt_id"], data["ranking"], data.get("all_bad", False))
        except UnknownPrompt:
            raise Refused(404, f"unknown prompt_id {data['prompt_id']!r}: this session has "
                          f"{len(session.candidates)} prompts") from None
        except BadRanking as e:
            raise Refused(422, str(e)) from None
        progress = session.progress()
        if progress["remaining"] == 0:
            stop()  # uvicorn finishes sending this response before it shuts down
        return {"saved": True, "progress": progress, "next": session.next_unranked(data["prompt_id"]),
                "done": progress["remaining"] == 0}

    @app.post("/api/finish")
    async def finish(request: Request):
        await json_body(request)  # JSON only, so a cross-site form post cannot stop the session
        stop()
        return {"progress": session.progress()}

    return app


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(session: LabelingSession, sock: socket.socket) -> None:
    """Serve until stop (finish / all ranked) or Ctrl-C, which uvicorn turns into a clean shutdown and
    then re-raises as KeyboardInterrupt."""
    import uvicorn

    server = None

    def stop():
        server.should_exit = True

    app = build_app(session, stop, host=sock.getsockname()[0])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    server.run(sockets=[sock])
