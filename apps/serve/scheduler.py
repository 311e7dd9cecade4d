"""Continuous batching: every request in flight shares one forward per step of the sampling loop.

One thread per model runs `pipeline.lm.generation.Decoding`, the state of the project's one sampling
loop. Between two steps it drops the rows that ended (EOS, a stop string, their token budget, or a
client that went away) and appends the rows of requests that arrived meanwhile, prefilled
together; so a new request waits for one step, not for the answers in flight. Each row keeps its
own temperature, top_p and random generator (a seeded request draws the same random numbers whatever
it is batched with). Results go back to each request's asyncio queue, one message per step.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field

import torch

from apps.serve.protocol import ApiError, ChatRequest
from pipeline.lm.generation import Decoding, chat_stop_ids, left_pad, pick_tokens, shape_logits


@dataclass
class Job:
    """One request: its prompt, settings, and where its results go."""

    request: ChatRequest
    prompt: list[int]
    budget: int  # tokens per choice
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    cancelled: bool = False  # the client went away: its rows leave the batch at the next step
    dropped: bool = False
    finished: int = 0
    completion_tokens: int = 0


@dataclass
class Row:
    """One choice of a job being generated: its tokens and how much of its text went out."""

    job: Job
    index: int
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already sent
    done: bool = False


class TextTracker:
    """Turns a row's tokens into text deltas: holds back an incomplete UTF-8 character and any tail
    that could be the start of a stop string, and cuts the text at a stop string."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def delta(self, row: Row, stops: list[str], final: bool) -> tuple[str, bool]:
        """(the text to send now, whether a stop string ended the answer)."""
        text = self.tok.decode(row.tokens, skip_special_tokens=True)
        start = max(0, row.sent - max((len(s) for s in stops), default=0))
        hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
        if hits:
            end, stopped = min(hits), True
        elif final:
            end, stopped = len(text), False
        else:
            end = len(text) - 1 if text.endswith("\ufffd") else len(text)
            held = max((k for s in stops for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
            end, stopped = end - held, False
        out = text[row.sent:end] if end > row.sent else ""
        row.sent = max(row.sent, end)
        return out, stopped


class Scheduler:
    """The batching loop of one model, in its own thread."""

    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_waiting: int = 128):
        self.model, self.tok = model, tokenizer
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.eos_ids = chat_stop_ids(model, tokenizer)
        self.text = TextTracker(tokenizer)
        self.waiting: list[Job] = []
        self.rows: list[Row] = []
        self.state: Decoding | None = None
        self.wake = threading.Condition()
        self.stats = {"steps": 0, "tokens": 0, "requests": 0, "disconnected": 0}
        self.running = True
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self.thread.start()

    # --- called from the web server's event loop -------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.wake:
            self.waiting = [j for j in self.waiting if not j.cancelled]  # their clients left
            queued = sum(j.request.n for j in self.waiting)
            if queued + job.request.n > self.max_waiting:
                raise ApiError(429, f"the server is busy ({len(self.rows)} answers in progress, {queued} waiting); "
                                    "retry shortly", kind="rate_limit_error", code="busy")
            self.waiting.append(job)
            self.stats["requests"] += 1
            self.wake.notify()

    def load(self) -> dict:
        return {"active": len(self.rows), "waiting": sum(j.request.n for j in self.waiting), **self.stats}

    def close(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        self.thread.join(timeout=10)

    # --- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.wake:
                while self.running and not self.waiting and not self.rows:
                    self.wake.wait()
                if not self.running:
                    return
                admitted = self._admit()
            try:
                if admitted:
                    self._prefill(admitted)
                self._step()
            except Exception as e:  # a failure ends the requests in flight, not the server
                for job in {id(r.job): r.job for r in self.rows + admitted}.values():
                    self._send(job, {"error": f"generation failed: {type(e).__name__}: {e}"})
                self.rows, self.state = [], None

    def _admit(self) -> list[Row]:
        """Rows for waiting jobs that fit in the batch (a job's choices enter together)."""
        if self.state is not None and not self.state.can_regroup():
            return []  # this cache cannot take new rows mid-flight: the batch finishes first
        rows: list[Row] = []
        while self.waiting and len(self.rows) + len(rows) + self.waiting[0].request.n <= self.max_batch:
            job = self.waiting.pop(0)
            if job.cancelled:
                continue
            for i in range(job.request.n):
                seed = job.request.seed + i if job.request.seed is not None else random.getrandbits(63)
                rows.append(Row(job, i, torch.Generator().manual_seed(seed % 2**63)))
        return rows

    def _prefill(self, rows: list[Row]) -> None:
        device = next(self.model.parameters()).device
        ids, mask = left_pad([r.job.prompt for r in rows], self.tok.pad_token_id, device)
        new = Decoding(self.model, ids, mask)
        if self.state is None:
            self.state = new
        else:
            self.state.extend(new)
        self.rows += rows

    def _step(self) -> None:
        rows, logits = self.rows, self.state.logits
        device = logits.device
        temps = torch.tensor([r.job.request.temperature for r in rows], device=device)
        top_ps = torch.tensor([r.job.request.top_p for r in rows], device=device)
        tokens = pick_tokens(logits, temps, 0, top_ps, [r.generator for r in rows])
        want_logprobs = any(r.job.request.logprobs for r in rows)
        want_probs = any(r.job.request.show_probs for r in rows)
        logp = logits.float().log_softmax(-1) if want_logprobs or want_probs else None
        shaped = shape_logits(logits, temps, 0, top_ps).softmax(-1) if want_probs else None
        self.stats["steps"] += 1
        updates: dict[int, tuple[Job, list]] = {}
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens.tolist())):
            job, req = row.job, row.job.request
            if job.cancelled and not job.dropped:
                job.dropped = True
                self.stats["disconnected"] += 1
            if job.cancelled or row.done:
                continue
            row.tokens.append(token)
            job.completion_tokens += 1
            self.stats["tokens"] += 1
            ended = token in self.eos_ids
            if ended:
                row.tokens.pop()  # the end-of-turn token is not part of the text
            final = ended or len(row.tokens) >= job.budget
            text, stopped = self.text.delta(row, req.stop, final)
            update = {"index": row.index, "text": text}
            if req.logprobs:
                update["logprobs"] = [self._logprob_entry(logp[i], token, req.top_logprobs)]
            if req.show_probs:
                update["candidates"] = self._candidates(logp[i], shaped[i], token, req)
            if stopped or final:
                update["finish_reason"] = "length" if final and not (ended or stopped) else "stop"
                job.finished += 1
                row.done = True
            else:
                keep.append(i)
            updates.setdefault(id(job), (job, []))[1].append(update)
        for job, choices in updates.values():
            self._send(job, {"choices": choices})
            if job.finished == job.request.n:
                self._send(job, {"done": True, "completion_tokens": job.completion_tokens})
        self._regroup(keep, tokens)

    def _regroup(self, keep: list[int], tokens: torch.Tensor) -> None:
        if not keep:
            self.rows, self.state = [], None
            return
        if len(keep) < len(self.rows) and self.state.can_regroup():
            self.state.keep(keep)
            self.rows = [self.rows[i] for i in keep]
            tokens = tokens[keep]
        # Otherwise the ended rows stay in the batch, marked done, and their tokens are ignored.
        self.state.advance(tokens)

    def _logprob_entry(self, logp: torch.Tensor, token: int, top: int) -> dict:
        def entry(t: int, lp: float) -> dict:
            text = self.tok.decode([t])
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

        out = entry(token, float(logp[token]))
        if top:
            values, ids = torch.topk(logp, top)
            out["top_logprobs"] = [entry(t, v) for t, v in zip(ids.tolist(), values.tolist())]
        else:
            out["top_logprobs"] = []
        return out

    def _candidates(self, logp: torch.Tensor, used: torch.Tensor, token: int, req: ChatRequest) -> list[dict]:
        """The top tokens of the model's distribution (T=1) and their probability in the distribution
        the token was drawn from (after temperature and top_p; greedy puts everything on the top)."""
        raw = logp.exp()
        if req.temperature <= 0:
            used = torch.zeros_like(raw)
            used[raw.argmax()] = 1.0
        ids = torch.topk(raw, req.show_probs).indices.tolist()
        if token not in ids:
            ids.append(token)
        return [{"token": self.tok.decode([t]), "p": float(raw[t]), "p_sampled": float(used[t]),
                 "picked": t == token} for t in ids]

    @staticmethod
    def _send(job: Job, message: dict) -> None:
        try:
            job.loop.call_soon_threadsafe(job.queue.put_nowait, message)
        except RuntimeError:  # the request's event loop is gone
            job.cancelled = True
