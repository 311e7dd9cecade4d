"""Held-out evaluation of a reward model: pairwise accuracy, margin, rank correlation with the
human ranking (K-way data), accuracy by rank distance and on length-controlled pairs.

Each distinct (prompt, response) is scored once -- a K-way ranking costs K forwards, not
K(K-1)/2 pairs -- with `pipeline.judge.scoring`, the same encoding the trainer used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from pipeline.judge.scoring import Messages, as_messages, encode_conversation, score_ids
from pipeline.judge.stats import kendall_tau


@dataclass
class Heldout:
    """Conversations to score and the human judgements between them."""

    prompts: list[Messages] = field(default_factory=list)  # per item
    responses: list[Messages] = field(default_factory=list)  # per item
    pairs: list[tuple[int, int, int | None]] = field(default_factory=list)  # (chosen, rejected, rank gap)
    rankings: list[list[list[int]]] = field(default_factory=list)  # tiers of item ids, best first (K-way data)
    _index: dict = field(default_factory=dict, repr=False)
    _ids: list[list[int]] | None = field(default=None, repr=False)

    def item(self, prompt: Messages, response: str | Messages) -> int:
        response = as_messages(response)
        key = json.dumps([prompt, response], sort_keys=True)
        if key not in self._index:
            self._index[key] = len(self.prompts)
            self.prompts.append(list(prompt))
            self.responses.append(response)
        return self._index[key]

    def response_chars(self, i: int) -> int:
        return sum(len(m.get("content") or "") for m in self.responses[i])

    def encoded(self, tokenizer, max_length: int | None) -> list[list[int]]:
        if self._ids is None:
            self._ids = [encode_conversation(tokenizer, p, r, max_length)[0]
                         for p, r in zip(self.prompts, self.responses)]
        return self._ids

    def __len__(self) -> int:
        return len(self.pairs)


def heldout_from_rankings(records: list[dict]) -> Heldout:
    """K-way records {"prompt": msgs, "responses": [str], "groups": [[best], ..., [worst]]} (validated
    by data.loaders.load_rankings; tied answers share a group and form no pair) -> every pair, with
    its rank distance."""
    h = Heldout()
    for rec in records:
        items = [h.item(rec["prompt"], r) for r in rec["responses"]]
        tiers = [[items[i] for i in g] for g in rec.get("groups") or [[i] for i in rec["ranking"]]]
        h.rankings.append(tiers)
        for a in range(len(tiers)):
            for b in range(a + 1, len(tiers)):
                h.pairs.extend((x, y, b - a) for x in tiers[a] for y in tiers[b] if x != y)
    return h


def heldout_from_pairs(records: list[dict]) -> Heldout:
    """Pairwise records (data.loaders.load_pairs) -> pairs; rank gap where the data has one."""
    h = Heldout()
    for rec in records:
        c, r = h.item(rec["prompt"], rec["chosen"]), h.item(rec["prompt"], rec["rejected"])
        if c != r:
            h.pairs.append((c, r, rec.get("rank_gap")))
    return h


# --------------------------------------------------------------------------- metrics


def _acc(wins: list[float]) -> float | None:
    return sum(wins) / len(wins) if wins else None


def heldout_metrics(scores: torch.Tensor, h: Heldout) -> dict:
    """Metrics from one score per item. Accuracy counts a tie as half right."""
    s = scores.tolist()
    wins, margins, by_gap, shorter, longer = [], [], {}, [], []
    for c, r, gap in h.pairs:
        diff = s[c] - s[r]
        win = 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
        wins.append(win)
        margins.append(diff)
        if gap is not None:
            by_gap.setdefault(int(gap), []).append(win)
        lc, lr = h.response_chars(c), h.response_chars(r)
        if lc < lr:
            shorter.append(win)
        elif lc > lr:
            longer.append(win)
    out = {
        "pairs": len(h.pairs),
        "accuracy": _acc(wins),
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "accuracy_chosen_shorter": _acc(shorter),
        "pairs_chosen_shorter": len(shorter),
        "accuracy_chosen_longer": _acc(longer),
        "pairs_chosen_longer": len(longer),
        "score_mean": sum(s) / len(s) if s else None,
        "score_std": float(torch.tensor(s).std(unbiased=False)) if len(s) > 1 else None,
    }
    for gap in sorted(by_gap):
        out[f"accuracy_gap{gap}"] = _acc(by_gap[gap])
        out[f"pairs_gap{gap}"] = len(by_gap[gap])
    if h.rankings:
        taus = []
        for tiers in h.rankings:
            human = [-rank for rank, tier in enumerate(tiers) for _ in tier]  # best first -> highest value
            tau = kendall_tau([s[i] for tier in tiers for i in tier], human)
            if tau is not None:
                taus.append(tau)
        out["kendall_tau"] = sum(taus) / len(taus) if taus else None
        out["rankings"] = len(h.rankings)
        out["accuracy_by_rank_pair"] = rank_pair_accuracy(s, h.rankings)
    return out


def rank_pair_accuracy(s: list[float], rankings: list[list[list[int]]], max_k: int = 6) -> dict[str, float]:
    """Accuracy for each pair of human ranks ("1>3": the best answer against the third), which
    shows *which* distinctions the model has learned (K-way data with up to max_k tiers)."""
    wins: dict[str, list[float]] = {}
    for tiers in rankings:
        if len(tiers) > max_k:
            continue
        for a in range(len(tiers)):
            for b in range(a + 1, len(tiers)):
                for x in tiers[a]:
                    for y in tiers[b]:
                        diff = s[x] - s[y]
                        wins.setdefault(f"{a + 1}>{b + 1}", []).append(1.0 if diff > 0 else 0.5 if diff == 0 else 0.0)
    return {k: sum(v) / len(v) for k, v in wins.items()}


def evaluate_heldout(model, tokenizer, h: Heldout, *, max_length: int | None,
                     batch_size: int = 32) -> tuple[dict, torch.Tensor]:
    scores = score_ids(model, h.encoded(tokenizer, max_length), tokenizer.pad_token_id, batch_size)
    return heldout_metrics(scores, h), scores


class HeldoutEvalCallback(TrainerCallback):
    """Scores the held-out set every `every` optimizer steps (and at the end of training) and
    logs `heldout_*` metrics through MetricsCallback's logger. Every process evaluates (cheap,
    and safe under sharded models); only the main one writes."""

    def __init__(self, h: Heldout, tokenizer, *, every: int, max_length: int | None, batch_size: int,
                 metrics_callback):
        self.h, self.tokenizer, self.every = h, tokenizer, every
        self.max_length, self.batch_size = max_length, batch_size
        self.metrics_callback = metrics_callback
        self.history: list[dict] = []

    def run(self, model, step: int) -> dict:
        metrics, _ = evaluate_heldout(model, self.tokenizer, self.h, max_length=self.max_length,
                                      batch_size=self.batch_size)
        logged = {f"heldout_{k}": v for k, v in metrics.items() if isinstance(v, float)}
        self.history.append({"step": step, **metrics})
        cb = self.metrics_callback
        cb.last.update(logged)
        if cb.enabled:
            cb.logger.log(step, **logged)
        return metrics

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every > 0 and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.run(model, state.global_step)
