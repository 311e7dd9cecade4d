"""The OpenAI chat-completions request, checked field by field, and the errors in OpenAI's format.

A bad request is answered with the status OpenAI uses and a body naming the parameter, e.g.
{"error": {"message": "temperature must be between 0 and 2, got 5", "type": "invalid_request_error",
"param": "temperature", "code": null}}, so every OpenAI client shows a useful message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
# Accepted for compatibility only at their neutral value: anything else changes sampling in a way we do not do.
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None, "tools": None, "functions": None,
           "response_format": None}


class ApiError(Exception):
    """An error answered in OpenAI's format: HTTP status, message, the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What one request may ask for (the server's --max-* options)."""

    max_tokens: int = 512
    max_n: int = 8
    max_body_bytes: int = 1 << 20


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None  # None: up to the context or the server's limit
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    show_probs: int = 0  # our extension: per token, the top candidates before and after temperature


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, got {value!r}", name)
    if value > high or value < low or (low_open and value == low):
        side = "greater than" if low_open else "at least"
        raise ApiError(400, f"{name} must be {side} {low:g} and at most {high:g}, got {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, default, low: int, high: int | None = None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, got {value!r}", name)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, f"{name} must be {bound}, got {value}", name)
    return value


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with role and content", where)
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}, got {m.get('role')!r}",
                           f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text parts carry meaning for a text model
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string", f"{where}.content")
        out.append({"role": role, "content": content})
    return out


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} "
                            "non-empty strings", "stop")
    return stops


def parse_chat_request(body, limits: Limits) -> ChatRequest:
    """The request, checked; raises ApiError(400) naming the first bad parameter."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model must be the name of a served model (GET /v1/models lists them)", "model")
    for name, neutral in NEUTRAL.items():
        if body.get(name, neutral) not in (neutral, None):
            raise ApiError(400, f"{name} is not supported by this server", name)
    messages = _messages(body)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _integer({name: max_tokens}, name, None, 1, limits.max_tokens)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise ApiError(400, f"logprobs must be true or false, got {logprobs!r}", "logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if top_logprobs and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", "stream")
    return ChatRequest(
        model=model, messages=messages,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        max_tokens=max_tokens, stop=_stop(body),
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        n=_integer(body, "n", 1, 1, limits.max_n),
        stream=stream, include_usage=bool(stream_options.get("include_usage")),
        logprobs=logprobs, top_logprobs=top_logprobs,
        show_probs=_integer(body, "show_probs", 0, 0, MAX_TOP_LOGPROBS),
    )
