"""One evaluator for "is the tuned model better than the one it started from?", used by the PPO stage
(on its development prompts) and by evaluation (on the test prompts): the same numbers, the same
intervals and the same quality-bar verdict, whoever asks.

Inputs are plain lists, one entry per answer, paired by position (answer i of both models replies to
the same prompt); `prompts` names the prompt of each pair, so every interval counts prompts even when
a prompt was answered several times.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.judge.quality_bar import MIN_WIN_RATE, quality_verdict
from pipeline.judge.stats import kl_estimates, length_matched, mean_std, paired_difference, spearman, win_rate


@dataclass
class ModelAnswers:
    """One model's answers to the shared prompts and their scores (None: not measured)."""

    name: str
    answers: list[str]
    rm_scores: list[float] | None = None
    gold_scores: list[float] | None = None


def prompt_key(prompt) -> str:
    """A hashable key for a prompt given as text or as chat messages."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def compare_models(candidate: ModelAnswers, baseline: ModelAnswers, prompts: Sequence, *, kl_budget: float,
                   kl_logprobs: tuple[list[list[float]], list[list[float]]] | None = None,
                   kl_skipped: str | None = None, length_tolerance: float = 0.2) -> dict:
    """The candidate against the baseline: mean scores, win rates by RM and gold (and at matched
    length), the paired gold difference, KL(candidate || baseline) and the quality-bar verdict.

    kl_logprobs: the token log-probabilities of the candidate's answers under the candidate and under
    the baseline (at the sampling temperature); without them `kl_skipped` says why."""
    n = len(candidate.answers)
    if len(baseline.answers) != n or len(prompts) != n:
        raise ValueError(f"compare_models: {n} candidate answers, {len(baseline.answers)} baseline answers, "
                         f"{len(prompts)} prompts")
    keys = [prompt_key(p) for p in prompts]
    cand_len = [len(a.split()) for a in candidate.answers]
    base_len = [len(a.split()) for a in baseline.answers]
    matched = length_matched(cand_len, base_len, length_tolerance)
    out: dict = {"candidate": candidate.name, "baseline": baseline.name, "answers": n, "prompts": len(set(keys)),
                 "words_candidate": mean_std(cand_len)[0], "words_baseline": mean_std(base_len)[0]}
    for judge, c, b in (("rm", candidate.rm_scores, baseline.rm_scores),
                        ("gold", candidate.gold_scores, baseline.gold_scores)):
        if c is None or b is None:
            continue
        out[f"{judge}_candidate"], out[f"{judge}_baseline"] = mean_std(c)[0], mean_std(b)[0]
        out[f"win_rate_{judge}"] = win_rate(c, b, clusters=keys)
        out[f"win_rate_{judge}_matched_length"] = win_rate([c[i] for i in matched], [b[i] for i in matched],
                                                           clusters=[keys[i] for i in matched])
    out["matched_length_pairs"] = len(matched)
    if "gold_candidate" in out and "rm_candidate" in out:  # does the RM order both models' answers as gold does?
        out["rm_gold_spearman"] = spearman(candidate.rm_scores + baseline.rm_scores,
                                           candidate.gold_scores + baseline.gold_scores)
    if "gold_candidate" in out:
        out["gold_difference"] = paired_difference(candidate.gold_scores, baseline.gold_scores, clusters=keys)
    if kl_logprobs is not None:
        kl = kl_estimates(*kl_logprobs)
        out["kl"] = {k: v for k, v in kl.items() if k != "per_answer_k1"}
        out["kl_per_answer"] = kl["per_answer_k1"]
    else:
        out["kl_skipped"] = kl_skipped or "no log-probabilities of the candidate's answers"
    if "rm_candidate" in out:
        out["quality_bar"] = {
            "candidate": candidate.name, "baseline": baseline.name, "min_win_rate": MIN_WIN_RATE,
            "kl_budget": kl_budget, "gold_difference": out.get("gold_difference"),
            **quality_verdict(win_rate=out["win_rate_rm"]["win_rate"], rm_candidate=out["rm_candidate"],
                              rm_baseline=out["rm_baseline"], kl=out["kl"]["k1_mean"] if "kl" in out else None,
                              kl_budget=kl_budget, gold_difference=out.get("gold_difference"),
                              baseline=baseline.name)}
    return out


def summary_line(c: dict, where: str) -> str:
    """The comparison in one printed line: where it was measured, RM win rate, KL, gold, lengths."""
    parts = [f"{c['candidate']} vs {c['baseline']} on {c['prompts']} {where} ({c['answers']} answer pairs)"]
    if "win_rate_rm" in c:
        w = c["win_rate_rm"]
        parts.append(f"RM win rate {w['win_rate']:.2f} (95% CI {w['ci_low']:.2f}-{w['ci_high']:.2f}, by prompt); "
                     f"RM score {c['rm_candidate']:+.3f} vs {c['rm_baseline']:+.3f}")
    if "kl" in c:
        budget = c["quality_bar"]["kl_budget"] if "quality_bar" in c else None
        parts.append(f"KL {c['kl']['k1_mean']:.2f} nats" + (f" (budget {budget})" if budget is not None else ""))
    if "gold_candidate" in c:
        parts.append(f"gold {c['gold_candidate']:.3f} vs {c['gold_baseline']:.3f}")
    if c.get("rm_gold_spearman") is not None:
        parts.append(f"Spearman(RM, gold) {c['rm_gold_spearman']:.2f}")
    parts.append(f"answer length {c['words_candidate']:.1f} vs {c['words_baseline']:.1f} words")
    return "; ".join(parts)
