"""The server's door: what a web page the user visits cannot make `python -m apps.serve` do. A Host
header that names another server is refused (DNS rebinding), a POST body not declared JSON is refused
(no cross-site form or text/plain post), no response allows another origin (CORS closed), JSON nested
deeper than the bound is refused before it is parsed, and any failure answers in OpenAI's error format
with one line in the log while the server keeps serving."""

import ipaddress
import json
import logging

import pytest
import torch
from serve_fixtures import httpx, running_server, served_models
from starlette.responses import StreamingResponse
from starlette.testclient import TestClient

from apps.chat import load_chat_model
from apps.serve.app import Served, create_app
from apps.serve.door import MAX_JSON_DEPTH, json_depth
from apps.serve.scheduler import Scheduler
from pipeline.listen import host_refusal

HELLO = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def server(tiny_lm_dir, tmp_path_factory):
    sft, _ = served_models(tiny_lm_dir, tmp_path_factory.mktemp("runs"))
    with running_server("--model", str(sft)) as s:
        yield s
    # Every hostile request below left nothing but silence in the log: no traceback, no warning.
    assert "Traceback" not in s.stderr and "Warning" not in s.stderr and "ERROR" not in s.stderr, s.stderr


def post(server, body: bytes, content_type: str | None = "application/json", **headers) -> httpx.Response:
    headers = {**({"Content-Type": content_type} if content_type else {}), **headers}
    return httpx.post(server.url + "/v1/chat/completions", content=body, headers=headers, timeout=30)


def openai_error(r: httpx.Response) -> dict:
    """The error of an OpenAI-format error response (and that it is one)."""
    assert r.headers["content-type"] == "application/json", r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


def answered(server) -> bool:
    r = post(server, json.dumps(HELLO).encode())
    return r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


# ---------------------------------------------------------------- Host

EVERY_INTERFACE = str(ipaddress.IPv4Address(0))  # the unspecified address
HOSTS = [  # (Host header, the address the server listens on, accepted)
    ("127.0.0.1:8000", "127.0.0.1", True),
    ("localhost:8000", "127.0.0.1", True),
    ("LocalHost", "127.0.0.1", True),
    ("[::1]:8000", "127.0.0.1", True),
    ("evil.example", "127.0.0.1", False),
    ("evil.example:8000", "127.0.0.1", False),
    ("127.0.0.1.evil.example", "127.0.0.1", False),
    ("", "127.0.0.1", False),
    ("192.168.1.20:8000", "127.0.0.1", False),  # another address of this machine: not what was asked
    ("192.168.1.20:8000", "192.168.1.20", True),  # --host names it
    ("gpu-box.lan", "gpu-box.lan", True),
    ("evil.example", "192.168.1.20", False),
    ("192.168.1.20", EVERY_INTERFACE, False),  # listening everywhere widens nothing: --host names the address
    ("[fe80::1]:80", "::", False),
    ("evil.example", EVERY_INTERFACE, False),
    ("localhost:8000", EVERY_INTERFACE, True),
]


@pytest.mark.parametrize("header,bound,accepted", HOSTS)
def test_only_names_of_this_server_pass_the_host_check(header, bound, accepted):
    refusal = host_refusal(header, bound, "--host")
    assert (refusal is None) == accepted, refusal
    if not accepted:
        assert refusal.startswith("unexpected Host") and "127.0.0.1, localhost, ::1" in refusal


def test_a_request_naming_another_host_is_refused_on_every_route(server):
    port = server.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}"):
        for r in (httpx.get(server.url + "/", headers={"Host": host}),
                  httpx.get(server.url + "/health", headers={"Host": host}),
                  httpx.get(server.url + "/v1/models", headers={"Host": host}),
                  post(server, json.dumps(HELLO).encode(), Host=host)):
            assert r.status_code == 400 and openai_error(r)["code"] == "unexpected_host"
    assert httpx.get(server.url + "/health", headers={"Host": f"localhost:{port}"}).status_code == 200
    assert answered(server)


def test_a_server_given_another_address_answers_to_that_name_too(tiny_lm_dir, tmp_path):
    sft, _ = served_models(tiny_lm_dir, tmp_path)
    with running_server("--model", str(sft), host="127.0.0.2") as s:
        assert httpx.get(s.url + "/health").status_code == 200  # Host: 127.0.0.2:PORT
        assert httpx.get(s.url + "/health", headers={"Host": "localhost"}).status_code == 200
        assert httpx.get(s.url + "/health", headers={"Host": "evil.example"}).status_code == 400


# ---------------------------------------------------------------- content type

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None, "application/json-seq"])
def test_a_post_body_not_declared_json_is_refused(server, content_type):
    r = post(server, json.dumps(HELLO).encode(), content_type)
    assert r.status_code == 415 and openai_error(r)["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_accepted(server):
    assert post(server, json.dumps(HELLO).encode(), "application/json; charset=utf-8").status_code == 200


# ---------------------------------------------------------------- CORS

def test_no_response_allows_another_origin_and_a_preflight_is_refused(server):
    origin = {"Origin": "http://evil.example"}
    preflight = httpx.request("OPTIONS", server.url + "/v1/chat/completions", headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 405 and openai_error(preflight)["code"] == "cors_not_allowed"
    responses = [preflight, httpx.get(server.url + "/v1/models", headers=origin),
                 httpx.get(server.url + "/", headers=origin),
                 post(server, json.dumps(HELLO).encode(), **origin),
                 post(server, b"{", **origin)]
    assert [r.status_code for r in responses] == [405, 200, 200, 200, 400]
    for r in responses:
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers


# ---------------------------------------------------------------- depth and size

def nested(depth: int) -> bytes:
    """A chat request whose messages are lists in lists, `depth` levels in all (the body object included)."""
    return b'{"model": "sft", "messages": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_json_depth_counts_brackets_outside_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[{{"}], "c": "\\"[["}') == 3
    assert json_depth(b'"[[[') == 0 and json_depth(b"[]" * 1000) == 1
    assert json_depth(nested(50_000)) == 50_000


def test_deep_nesting_is_refused_before_parsing_and_the_bound_is_exact(server):
    for depth in (50_000, MAX_JSON_DEPTH + 1):
        r = post(server, nested(depth))
        assert r.status_code == 400 and openai_error(r)["code"] == "json_too_deep", r.text
    at_bound = post(server, nested(MAX_JSON_DEPTH))  # parsed: refused for what it says, not how it nests
    assert at_bound.status_code == 400 and openai_error(at_bound)["param"] == "messages[0]"
    brackets_in_text = {**HELLO, "messages": [{"role": "user", "content": "[{" * 5000}]}
    assert post(server, json.dumps(brackets_in_text).encode()).status_code in (200, 413)  # text, not nesting
    assert answered(server)


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b'{"model": "sft", "messages": "\xe9"}'], ids=["utf16-bom", "latin1"])
def test_a_body_that_is_not_utf8_is_refused(server, body):
    r = post(server, body)
    assert r.status_code == 400 and "UTF-8" in openai_error(r)["message"]


def test_half_a_surrogate_pair_is_refused_and_a_whole_pair_is_text(server):
    for lone in ({**HELLO, "messages": [{"role": "user", "content": "\ud800 hi"}]}, {**HELLO, "model": "\udfff"}):
        r = post(server, json.dumps(lone).encode())  # json.dumps escapes it: \\ud800, valid JSON, no text
        assert r.status_code == 400 and "surrogate" in openai_error(r)["message"]
    emoji = {**HELLO, "messages": [{"role": "user", "content": "\U0001F600"}]}  # sent as \\ud83d\\ude00
    assert post(server, json.dumps(emoji).encode()).status_code == 200


def test_the_body_size_is_bounded_with_or_without_a_declared_length(server):
    big = json.dumps({**HELLO, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode()
    declared = post(server, big)
    chunked = httpx.post(server.url + "/v1/chat/completions", content=iter([big[i:i + 65536] for i in
                         range(0, len(big), 65536)]), headers={"Content-Type": "application/json"}, timeout=30)
    for r in (declared, chunked):
        assert r.status_code == 413 and openai_error(r)["code"] == "request_too_large"
    assert answered(server)


# ---------------------------------------------------------------- failures

@pytest.fixture
def app_with_failing_routes(tiny_lm_dir):
    """The real app over a real tiny model, plus two routes that fail: before answering and mid-stream."""
    model, tok = load_chat_model(str(tiny_lm_dir), torch.device("cpu"))
    app = create_app([Served("sft", str(tiny_lm_dir), model, tok, Scheduler(model, tok))])

    async def fails():
        raise RuntimeError("a bug in a handler")

    async def fails_mid_stream():
        async def events():
            yield "data: {}\n\n"
            raise RuntimeError("a bug while streaming")
        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_api_route("/v1/fails", fails, methods=["POST"])
    app.add_api_route("/v1/fails-mid-stream", fails_mid_stream, methods=["POST"])
    return app


def test_an_exception_in_a_handler_is_a_json_500_with_one_log_line_and_the_server_keeps_serving(
        app_with_failing_routes, caplog):
    json_post = {"headers": {"Content-Type": "application/json", "Host": "127.0.0.1"}, "content": b"{}"}
    # raise_server_exceptions: an exception that got past the door would be raised here, failing the test
    with TestClient(app_with_failing_routes, base_url="http://127.0.0.1") as client, \
            caplog.at_level(logging.INFO):
        r = client.post("/v1/fails", **json_post)
        assert r.status_code == 500
        error = openai_error(r)
        assert error["type"] == "server_error" and "RuntimeError" in error["message"]
        assert "a bug" not in error["message"]  # the details go to the log, not to whoever asked

        with client.stream("POST", "/v1/fails-mid-stream", **json_post) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[0] == "data: {}" and json.loads(events[-1][6:])["error"]["type"] == "server_error"

        ok = client.post("/v1/chat/completions", headers=json_post["headers"], json=HELLO)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.getMessage(), r.exc_info) for r in lines] == [
        ("POST /v1/fails failed: RuntimeError: a bug in a handler", None),
        ("POST /v1/fails-mid-stream failed: RuntimeError: a bug while streaming", None)]
