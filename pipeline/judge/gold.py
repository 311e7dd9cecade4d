"""The held-out judge ("gold"): what every report's gold scores, gold win rates and gold differences mean,
chosen by `judge.gold`. One protocol, four kinds:

  demo              the demo's gold metric against each prompt's reference answer (data/gold.py): exact,
                    model-free, and only where prompts come with reference answers -- real users have none;
  reward:<dir>      a second reward model (Gao et al. 2023 used a larger one as the gold): its raw score;
  rankings:<file>   held-out human rankings of answers to the same prompts: an answer scores how much more it
                    resembles the answers people ranked high than those they ranked low (below);
  model:<dir>       a causal LM as the judge: the mean log-probability of the answer's tokens, after the
                    question and, where the prompt has one, its reference answer (so the LM grades against
                    the reference rather than its own taste).

    judge = build_gold("rankings:held.jsonl", metric=gold_score, rankings=load_rankings, device=device)
    scores = judge.score(prompts, answers, golds)     # one float per answer, None where it cannot judge

A judge never trains anything and nothing trains on it: it is the check on whether "the reward went up"
also means "the answers got better". pipeline/ reads no data/, so the text metric and the rankings'
records are handed in by the caller (data/held_out_judge.py reads the config and the file).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.config.schema_rl import parse_gold
from pipeline.errors import UserError

TextMetric = Callable[[str, str], float]  # (answer, reference) -> similarity in [0, 1]


class GoldJudge(Protocol):
    name: str  # how reports name this judge ("demo", "reward:runs/big/reward", ...)

    def score(self, prompts: Sequence, answers: Sequence[str], golds: Sequence[str | None]) -> list[float | None]:
        """One score per answer (higher is better), None where this judge has nothing to judge it by."""


def _prompt_key(prompt) -> str:
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return json.dumps([{"role": m.get("role"), "content": m.get("content")} for m in prompt], sort_keys=True)


@dataclass
class MetricGold:
    """The demo's gold metric: the answer against the prompt's reference answer."""

    metric: TextMetric
    name: str = "demo"

    def score(self, prompts, answers, golds):
        return [float(self.metric(a, g)) if g else None for a, g in zip(answers, golds)]


@dataclass
class RewardModelGold:
    """A second reward model's raw score of each (prompt, answer text), encoded as the reward stage trained it."""

    model: object
    tokenizer: object
    max_length: int | None
    name: str
    batch_size: int = 32

    def score(self, prompts, answers, golds):
        from pipeline.judge.scoring import as_prompt, score_conversations

        return score_conversations(self.model, self.tokenizer, [as_prompt(p) for p in prompts], list(answers),
                                   batch_size=self.batch_size, max_length=self.max_length).tolist()


class RankingsGold:
    """Held-out human rankings as the judge, where the prompts match.

    People ranked a few answers to each prompt (tiers best first). A new answer scores
    sum_i sim(answer, r_i) * (u_i - mean u), with u_i = 1 for the best tier falling evenly to 0 for the
    worst and sim the text metric: positive when it resembles what people preferred more than what they
    rejected, 0 when it resembles none of them (or all alike). Two models' answers are thus ordered as
    people ordered the answers they resemble -- a judge built from held-out preferences, no model needed."""

    def __init__(self, records: list[dict], metric: TextMetric, name: str):
        self.metric, self.name = metric, name
        self.by_prompt: dict[str, list[tuple[str, float]]] = {}
        for r in records:
            groups = r["groups"]
            last = max(1, len(groups) - 1)
            utility = [(r["responses"][i], 1 - t / last) for t, tier in enumerate(groups) for i in tier]
            mean = sum(u for _, u in utility) / len(utility)
            self.by_prompt[_prompt_key(r["prompt"])] = [(text, u - mean) for text, u in utility]

    def score(self, prompts, answers, golds):
        out: list[float | None] = []
        for p, a in zip(prompts, answers):
            ranked = self.by_prompt.get(_prompt_key(p))
            out.append(None if ranked is None else sum(self.metric(a, text) * u for text, u in ranked))
        return out


def with_reference(prompt: list[dict], reference: str | None) -> list[dict]:
    """The question, followed by the reference answer where there is one (what a model judge reads)."""
    msgs = [dict(m) for m in prompt]
    if reference:
        msgs[-1]["content"] += f"\n\nReference answer: {reference}"
    return msgs


def mean_answer_logprobs(model, tokenizer, prompt: list[dict], answers: Sequence[str], batch_size: int = 32) -> list[float]:
    """The mean log-probability of each answer's tokens (up to its end of turn, as a policy samples it) after
    `prompt`, under a causal LM: a model's judgement of answers to one prompt."""
    from pipeline.lm.chat_format import close_at_turn_end, encode_chat
    from pipeline.lm.generation import answer_logprobs

    context = encode_chat(tokenizer, prompt, add_generation_prompt=True)
    full = [close_at_turn_end(tokenizer, encode_chat(tokenizer, prompt + [{"role": "assistant", "content": a}]))
            for a in answers]
    tails = [ids[len(context):] if ids[:len(context)] == context else ids[-max(1, len(ids) - len(context)):]
             for ids in full]
    lps = answer_logprobs(model, [context] * len(answers), tails, pad_id=tokenizer.pad_token_id,
                          temperature=0, batch_size=batch_size)
    return [round(sum(lp) / max(1, len(lp)), 6) for lp in lps]


@dataclass
class ModelGold:
    """A causal LM as the judge: mean log-probability of the answer after the question (+ reference)."""

    model: object
    tokenizer: object
    name: str
    batch_size: int = 32

    def score(self, prompts, answers, golds):
        out = []
        for p, a, g in zip(prompts, answers, golds):
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            out += mean_answer_logprobs(self.model, self.tokenizer, with_reference(msgs, g), [a], self.batch_size)
        return out


def build_gold(value: str, *, metric: TextMetric, rankings: Callable[[str], list[dict]] | None = None,
               device=None, batch_size: int = 32) -> GoldJudge:
    """The judge `judge.gold` names. `metric`: the demo's text metric (also the rankings' similarity);
    `rankings`: reads a rankings file into records ({"prompt", "responses", "groups"})."""
    kind, path = parse_gold(value)
    if kind == "demo":
        return MetricGold(metric)
    name = f"{kind}:{path}"
    if kind == "reward":
        import torch

        from pipeline.judge.scoring import load_reward_model

        model, tokenizer, info = load_reward_model(path, dtype=torch.float32, device=device)
        return RewardModelGold(model, tokenizer, info.get("max_length"), name, batch_size)
    if kind == "rankings":
        if rankings is None:
            raise ValueError("build_gold: rankings:<file> needs a reader of rankings files")
        records = rankings(path)
        if not records:
            raise UserError(f"judge.gold={value}: {path} holds no ranking.")
        return RankingsGold(records, metric, name)
    import torch
    from transformers import AutoTokenizer

    from pipeline.lm.loading import loading
    from pipeline.lm.model import load_causal_lm

    model = load_causal_lm(path, dtype=torch.float32).to(device or "cpu").eval()
    with loading(path, "judge model's tokenizer", model=False, tokenizer=True):
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        raise UserError(f"judge.gold={value}: its tokenizer has no PAD token.")
    return ModelGold(model, tokenizer, name, batch_size)
