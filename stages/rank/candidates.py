"""K answers per prompt from the policy, at a spread of temperatures, with the policy's log-probability
of each: the material a labeler ranks.

Sampled with the project's one loop (pipeline.lm.generation), in chunks of prompts saved one file each
(written whole, then renamed), so a killed run keeps every finished chunk and resumes at the next.
Each chunk and answer slot has its own seeded generator: a resumed run writes exactly what an
uninterrupted one would have. Under `accelerate launch` the chunks are shared out, one per process at a
time, and the main process writes each one's file: the same files, whatever the number of processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pipeline.artifacts.metrics import progress
from pipeline.errors import UserError
from pipeline.lm.chat_format import encode_chat
from pipeline.lm.generation import context_length, eos_ids_of, generate
from pipeline.runtime.processes import ONE, Processes

SKIPPED = "fewer than 2 distinct answers"


def load_prompt_records(source: str, prefix: str, limit: int | None) -> list[dict]:
    """[{"prompt_id", "prompt" (text or None), "messages", "gold", "object"}] of a prompt file, the first `limit`.

    A prompt id is the record's place in its file (p000123), so it stays the same when `limit` changes."""
    from data.loaders import load_prompts, read_records

    prompts = load_prompts(source)
    objects = [rec.get("object") for _, _, rec in read_records(source, "prompt") if isinstance(rec, dict)]
    if len(objects) != len(prompts):  # a loader dropped records: objects cannot be matched by place
        objects = [None] * len(prompts)
    out = []
    for i, (p, obj) in enumerate(zip(prompts, objects)):
        msgs = p["prompt"]
        single = len(msgs) == 1 and msgs[0]["role"] == "user"
        rec = {"prompt_id": f"{prefix}{i:06d}", "prompt": msgs[0]["content"] if single else None, "messages": msgs,
               "gold": p.get("gold"), "object": obj}
        out.append(rec)
    return out[:limit] if limit is not None else out


def chunk_path(directory: Path, kind: str, index: int) -> Path:
    return directory / f"{kind}-{index:05d}.jsonl"


def generate_candidates(model, tokenizer, prompts: list[dict], *, kind: str, directory: Path, k: int,
                        temperatures: list[float], max_new_tokens: int, batch_size: int, chunk_prompts: int,
                        seed: int, policy: str, processes: Processes = ONE) -> list[dict]:
    """Every prompt's record: candidates (distinct answers) or skipped ones (`"skipped": true`), in order
    (on the main process; the others sample their share of the chunks and return []).

    Chunks already in `directory` are read back instead of sampled again. The processes take the missing
    chunks `world` at a time; the main process writes them as they come."""
    chunks = [prompts[s:s + chunk_prompts] for s in range(0, len(prompts), chunk_prompts)]
    done = [c for c in range(len(chunks)) if chunk_path(directory, kind, c).is_file()]
    if done and processes.main:
        print(f"rank: resuming {kind}: {len(done)} of {len(chunks)} chunks already sampled")
    todo = [c for c in range(len(chunks)) if c not in done]
    bar = progress(len(prompts), initial=sum(len(chunks[c]) for c in done), desc=f"rank {kind.split('-')[0]}",
                   enabled=processes.main)
    for start in range(0, len(todo), processes.world):
        fresh = {c: sample_chunk(model, tokenizer, chunks[c], k=k, temperatures=temperatures,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed * 100_003 + c,
                                 policy=policy)
                 for c in processes.mine(todo[start:start + processes.world])}
        fresh = processes.gather(fresh)
        if processes.main:
            for c, records in sorted(fresh.items()):
                path = chunk_path(directory, kind, c)
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                os.replace(tmp, path)
                bar.update(len(chunks[c]))
    bar.close()
    if not processes.main:
        return []
    return [json.loads(line) for c in range(len(chunks)) for line in chunk_path(directory, kind, c).read_text().split("\n") if line]


@torch.no_grad()
def sample_chunk(model, tokenizer, chunk: list[dict], *, k: int, temperatures: list[float], max_new_tokens: int,
                 batch_size: int, seed: int, policy: str) -> list[dict]:
    device = next(model.parameters()).device
    eos_ids, pad_id = eos_ids_of(model, tokenizer), tokenizer.pad_token_id
    keep = max(1, context_length(model) - max_new_tokens)
    ids = [encode_chat(tokenizer, p["messages"], add_generation_prompt=True)[-keep:] for p in chunk]
    answers = [[] for _ in chunk]  # per prompt: (text, temperature, log-prob) for every slot
    for slot in range(k):
        temperature = temperatures[slot % len(temperatures)]
        gen = torch.Generator(device=device).manual_seed(seed * 31 + slot)
        for start in range(0, len(chunk), batch_size):
            batch = ids[start:start + batch_size]
            logprob = AnswerLogprob(eos_ids)
            out = generate(model, batch, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                           temperature=temperature, generator=gen, on_step=logprob)
            for i, (tokens, lp) in enumerate(zip(out, logprob.total.tolist())):
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                answers[start + i].append((text, temperature, lp))
    return [merge_answers(p, a, policy) for p, a in zip(chunk, answers)]


class AnswerLogprob:
    """`on_step` of the sampling loop: sums log p(token) under the policy's own distribution
    (temperature 1) over each answer's tokens, EOS included, nothing after it."""

    def __init__(self, eos_ids: set[int]):
        self.eos = torch.tensor(sorted(eos_ids))
        self.total = None
        self.ended = None

    def __call__(self, step: int, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        if self.total is None:
            self.total = torch.zeros(logits.size(0), device=logits.device)
            self.ended = torch.zeros(logits.size(0), dtype=torch.bool, device=logits.device)
        lp = logits.float().log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
        self.total += lp.masked_fill(self.ended, 0.0)
        self.ended |= torch.isin(tokens, self.eos.to(tokens.device))


def merge_answers(prompt: dict, answers: list[tuple[str, float, float]], policy: str) -> dict:
    """One candidates record: identical answers merged (the first sample kept), or a skipped record."""
    seen: dict[str, int] = {}
    responses, temps, logprobs = [], [], []
    for text, temperature, lp in answers:
        if text in seen:
            continue
        seen[text] = len(responses)
        responses.append(text)
        temps.append(temperature)
        logprobs.append(round(lp, 4))
    rec = {"prompt_id": prompt["prompt_id"]}
    if prompt["prompt"] is not None:
        rec["prompt"] = prompt["prompt"]
    else:
        rec["messages"] = prompt["messages"]
    rec.update(responses=responses, temperatures=temps, logprobs=logprobs)
    if prompt.get("gold") is not None:
        rec["gold"] = prompt["gold"]
    if prompt.get("object"):
        rec["object"] = prompt["object"]
    rec["policy"] = policy
    rec["sampled"] = len(answers)
    if len(responses) < 2:
        rec["skipped"] = True
        rec["reason"] = SKIPPED
    return rec


def prompt_messages(rec: dict) -> list[dict]:
    """The conversation a candidates record answers."""
    return rec.get("messages") or [{"role": "user", "content": rec["prompt"]}]


def require_gold(records: list[dict], source: str, what: str) -> list[dict]:
    """The prompts with a gold answer. Public data has a few without one (an HH transcript whose
    chosen answer is empty): those are dropped and counted; none with one is an error."""
    kept = [r for r in records if r.get("gold") is not None]
    if not kept:
        raise UserError(f"{source}: none of {len(records)} prompts has a \"gold\" answer, which {what} "
                        "needs; add a gold field or use rank.labeler=human or rank.labeler=judge.")
    if len(kept) < len(records):
        print(f"rank: dropped {len(records) - len(kept)} of {len(records)} prompts of {source} without a gold "
              f"answer ({what} needs one)")
    return kept
