"""Feedback on the server's answers: POST /v1/feedback and GET /v1/feedback/status.

Every finished completion is remembered (CompletionMemory: the conversation, each choice's text, the
model, its fingerprint and the sampling settings) so that feedback can name answers by what the API
returned: the completion's `id` and the choice's `index`. The memory keeps at most --feedback-memory
completions (default 2048) and MAX_MEMORY_CHARS characters of conversations and answers (64 million:
a request may carry up to --max-body-kb of messages), forgetting the least recently used first. An id
it no longer holds is answered 404 ("unknown or expired"). Streamed completions are remembered when they end; a
stream the client left is not (its answers were never whole).

POST /v1/feedback takes one of
    {"ranking": [[{"id": ID, "index": I}, ...], ...]}   groups best first; the answers in a group are tied;
                                                        every answer to the same conversation (one
                                                        completion with n > 1, or several completions of
                                                        the same messages, also from two models)
    {"rating": {"id": ID, "index": I, "good": true|false}}
with optional "reason" (text), "labeler" (the person's name: letters, digits, . _ -; default "person";
stored as NAME@serve) and, for a ranking, "all_bad": true. It answers {"id": FEEDBACK_ID, "stored": true}
once the record is on disk (data/feedback.py: the store, appended under a lock and fsync'ed). Bad
bodies, unknown ids, answers to different conversations and an answer named twice get OpenAI-format
4xx errors; with --no-feedback (or a model from no run and no --feedback-dir) every call gets a 403.

GET /v1/feedback/status (what the chat page shows): {"enabled": bool, "store": path or null, "note":
one line saying where feedback goes or why it is off, "remembered": completions held, "capacity":
the memory's bound, "stored": records this server stored since it started}.
Both routes need the API key when one is set, like the rest of /v1.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from apps.serve.protocol import ApiError
from data.feedback import LABELER_NAME, FeedbackStore, ranking_record, rating_record
from pipeline.errors import os_error_line

DEFAULT_MEMORY = 2048
MAX_MEMORY_CHARS = 64_000_000
MAX_REASON_CHARS = 2000
BODY_KEYS = {"ranking", "rating", "reason", "labeler", "all_bad"}


@dataclass
class Completion:
    """What feedback on one completion needs to be stored: its conversation and answers and their source."""

    messages: list[dict]
    answers: list[str]
    model: str
    fingerprint: str | None
    sampling: dict
    created: float = field(default_factory=time.time)

    @property
    def chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages) + sum(map(len, self.answers))


class CompletionMemory:
    """Completions by id, at most `capacity` of them and `max_chars` characters (least recently used
    forgotten first)."""

    def __init__(self, capacity: int = DEFAULT_MEMORY, max_chars: int = MAX_MEMORY_CHARS):
        self.capacity, self.max_chars = capacity, max_chars
        self.items: OrderedDict[str, Completion] = OrderedDict()
        self.chars = 0

    def remember(self, completion_id: str, completion: Completion) -> None:
        self.chars += completion.chars
        self.items[completion_id] = completion
        while len(self.items) > self.capacity or (self.chars > self.max_chars and len(self.items) > 1):
            self.chars -= self.items.popitem(last=False)[1].chars

    def get(self, completion_id: str) -> Completion | None:
        found = self.items.get(completion_id)
        if found is not None:
            self.items.move_to_end(completion_id)
        return found

    def __len__(self) -> int:
        return len(self.items)


def sampling_of(request) -> dict:
    """The settings the answers were sampled with (a ChatRequest), as stored beside them."""
    return {"temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_tokens,
            "stop": request.stop, "seed": request.seed, "n": request.n}


def _answer(ref, where: str, memory: CompletionMemory) -> tuple[Completion, dict]:
    """One {"id", "index"} reference, resolved: its completion and the answer as the store keeps it."""
    if not isinstance(ref, dict) or set(ref) - {"id", "index", "good"} or "id" not in ref or "index" not in ref:
        raise ApiError(400, f'{where} must be an object {{"id": COMPLETION_ID, "index": CHOICE_INDEX}}', where)
    cid, index = ref["id"], ref["index"]
    if not isinstance(cid, str) or not cid:
        raise ApiError(400, f"{where}.id must be the id of a chat completion (a string), got {cid!r}", f"{where}.id")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ApiError(400, f"{where}.index must be a choice's index (an integer), got {index!r}", f"{where}.index")
    completion = memory.get(cid)
    if completion is None:
        raise ApiError(404, f"{where}.id: the completion {cid!r} is unknown or expired (this server remembers its "
                            f"newest {memory.capacity} completions, and forgets them when it restarts)",
                       f"{where}.id", code="completion_not_found")
    if not 0 <= index < len(completion.answers):
        raise ApiError(400, f"{where}.index: the completion {cid} has {len(completion.answers)} choices "
                            f"(0..{len(completion.answers) - 1}), got {index}", f"{where}.index")
    return completion, {"text": completion.answers[index], "completion": cid, "index": index,
                        "model": completion.model, "model_fingerprint": completion.fingerprint,
                        "sampling": completion.sampling}


def _common(body) -> tuple[str, str | None]:
    """(labeler as stored, reason) after checking the body's shape."""
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object: {"ranking": [...]} or {"rating": {...}}')
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; a feedback body has ranking or rating, and optionally "
                            "reason, labeler and all_bad", unknown[0])
    if ("ranking" in body) == ("rating" in body):
        raise ApiError(400, 'give exactly one of "ranking" (answers best first) or "rating" (one answer good or bad)')
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise ApiError(400, f"reason must be text of at most {MAX_REASON_CHARS} characters", "reason")
    name = body.get("labeler", "person")
    if not isinstance(name, str) or not LABELER_NAME.fullmatch(name):
        raise ApiError(400, "labeler must be a name of 1 to 64 letters, digits, '.', '_' or '-'", "labeler")
    return f"{name}@serve", reason or None


def parse_ranking(body: dict, memory: CompletionMemory) -> tuple[list[dict], list[dict], list[list[int]]]:
    """(messages, answers, groups of indices into answers, best first) of a ranking body."""
    ranking = body["ranking"]
    if not isinstance(ranking, list) or not ranking:
        raise ApiError(400, 'ranking must be a non-empty list of groups, best first: [[{"id": ID, "index": 0}], '
                            '[{"id": ID, "index": 1}]] (answers in one group are tied)', "ranking")
    answers, groups, seen, messages = [], [], {}, None
    for g, group in enumerate(ranking):
        if not isinstance(group, list) or not group:
            raise ApiError(400, f"ranking[{g}] must be a non-empty list of answers (a group of tied answers)",
                           f"ranking[{g}]")
        groups.append([])
        for a, ref in enumerate(group):
            where = f"ranking[{g}][{a}]"
            completion, answer = _answer(ref, where, memory)
            if "good" in ref:
                raise ApiError(400, f"{where}: 'good' belongs in a rating, not in a ranking", where)
            key = (answer["completion"], answer["index"])
            if key in seen:
                raise ApiError(400, f"{where} names the answer {key[0]} index {key[1]} again (first at {seen[key]}); "
                                    "name each answer once and tie answers by putting them in one group", where,
                               code="duplicate_answer")
            seen[key] = where
            if messages is None:
                messages = completion.messages
            elif completion.messages != messages:
                raise ApiError(400, f"{where} answers a different conversation than ranking[0][0]; a ranking "
                                    "compares answers to the same messages", where, code="mixed_conversations")
            groups[-1].append(len(answers))
            answers.append(answer)
    if len(answers) < 2:
        raise ApiError(400, "a ranking needs at least two answers (to judge one, send a rating)", "ranking")
    all_bad = body.get("all_bad", False)
    if not isinstance(all_bad, bool):
        raise ApiError(400, f"all_bad must be true or false, got {all_bad!r}", "all_bad")
    return messages, answers, groups


class Feedback:
    """The server's feedback: the completions it remembers and the store (None: feedback is off)."""

    def __init__(self, store_dir: Path | None, note: str, capacity: int = DEFAULT_MEMORY):
        self.store = FeedbackStore(store_dir) if store_dir else None
        self.note = note
        self.memory = CompletionMemory(capacity)
        self.stored = 0

    def status(self) -> dict:
        return {"enabled": self.store is not None, "store": str(self.store.path) if self.store else None,
                "note": self.note, "remembered": len(self.memory), "capacity": self.memory.capacity,
                "stored": self.stored}

    def record(self, body) -> dict:
        """The record a feedback body asks to store (checked; an ApiError says what is wrong)."""
        if self.store is None:
            raise ApiError(403, f"this server records no feedback: {self.note}", code="feedback_off")
        labeler, reason = _common(body)
        if "ranking" in body:
            messages, answers, groups = parse_ranking(body, self.memory)
            return ranking_record(messages, answers, groups, labeler=labeler, reason=reason,
                                  all_bad=body.get("all_bad", False))
        if "all_bad" in body:
            raise ApiError(400, "all_bad belongs to a ranking; a rating says good: false", "all_bad")
        rating = body["rating"]
        completion, answer = _answer(rating, "rating", self.memory)
        good = rating.get("good")
        if not isinstance(good, bool):
            raise ApiError(400, f"rating.good must be true or false, got {good!r}", "rating.good")
        return rating_record(completion.messages, answer, good, labeler=labeler, reason=reason)

    async def submit(self, body) -> dict:
        record = self.record(body)
        try:
            await asyncio.to_thread(self.store.append, record)  # fsync off the event loop: streams keep flowing
        except OSError as e:  # a full disk, a folder made read-only since the start: said, and nothing stored
            raise ApiError(500, f"the feedback was not stored: {os_error_line(e) or e}", kind="server_error",
                           code="not_stored") from None
        self.stored += 1
        return {"id": record["id"], "stored": True}
