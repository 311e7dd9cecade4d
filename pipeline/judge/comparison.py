"""Compare: one evaluator for "is the tuned model better than the one it started from?", the last step
of the judge (pipeline/judge/evaluate.py) that PPO's report, the DPO/GRPO/RLOO report, eval and compare
all call: the same numbers, the same intervals and the same quality-bar verdict, whoever asks.

Inputs are plain lists, one entry per answer, paired by position (answer i of both models replies to
the same prompt); `prompts` names the prompt of each pair, so every interval counts prompts even when
a prompt was answered several times.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.judge.quality_bar import MIN_WIN_RATE, quality_verdict
from pipeline.judge.stats import kl_estimates, length_matched, mean_std, paired_difference, spearman, win_rate


@dataclass
class ModelAnswers:
    """One model's answers to the shared prompts and their scores (None: not measured). Answers sampled
    by `pipeline.judge.answering.answer` also carry their token ids and log-probabilities (for the KL)."""

    name: str
    answers: list[str]
    rm_scores: list[float] | None = None
    gold_scores: list[float] | None = None
    prompt_ids: list[list[int]] = field(default_factory=list)
    answer_ids: list[list[int]] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)  # the answer ended with an end-of-turn token
    vocab_key: int = 0  # hash of the tokenizer's vocabulary: log-probabilities compare only on the same tokens
    logprobs: list[list[float]] | None = None  # each answer's tokens under the model that sampled it


def prompt_key(prompt) -> str:
    """A hashable key for a prompt given as text or as chat messages."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def compare_models(candidate: ModelAnswers, baseline: ModelAnswers, prompts: Sequence, *, kl_budget: float,
                   kl_logprobs: tuple[list[list[float]], list[list[float]]] | None = None,
                   kl_skipped: str | None = None, length_tolerance: float = 0.2,
                   kl_analytic: tuple[float, str] | None = None) -> dict:
    """The candidate against the baseline: mean scores, win rates by RM and gold (and at matched
    length), the paired gold difference, KL(candidate || baseline) and the quality-bar verdict.

    kl_logprobs: the token log-probabilities of the candidate's answers under the candidate and under
    the baseline (at the sampling temperature); without them `kl_skipped` says why, or `kl_analytic` gives
    (a KL known without sampling, what it is): best of n's log n - (n-1)/n."""
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
    elif kl_analytic is not None:
        out["kl"] = {"k1_mean": kl_analytic[0], "analytic": kl_analytic[1]}
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


def compare_answers(candidate: ModelAnswers, baseline: ModelAnswers, prompts: Sequence, *, kl_budget: float,
                    under_baseline: list[list[float]] | None, length_tolerance: float = 0.2) -> dict:
    """`compare_models` for sampled answers: KL(candidate || baseline) from the candidate's own log-probabilities
    and `under_baseline` (the candidate's answers under the baseline), or the reason it cannot be estimated."""
    kl, why = None, None
    if candidate.logprobs is None:
        why = "greedy answers (temperature 0) are not samples, so they cannot estimate a KL"
    elif under_baseline is not None:
        kl = (candidate.logprobs, under_baseline)
    else:
        why = "the two models use different tokenizers, so their log-probabilities do not compare"
    return compare_models(candidate, baseline, prompts, kl_budget=kl_budget, kl_logprobs=kl, kl_skipped=why,
                          length_tolerance=length_tolerance)


def summarise(m: ModelAnswers) -> dict:
    """One model's answers in a few numbers: mean length in words and tokens, how many ended with an
    end-of-turn token (the rest hit the length limit), and the mean and spread of each score."""
    words = [len(a.split()) for a in m.answers]
    out = {"answer_words_mean": mean_std(words)[0], "answer_tokens_mean": mean_std([len(a) for a in m.answer_ids])[0],
           "ended_with_eos": sum(m.ended) / max(1, len(m.ended))}
    for key, scores in (("rm", m.rm_scores), ("gold", m.gold_scores)):
        if scores is not None:
            out[f"{key}_mean"], out[f"{key}_std"] = mean_std(scores)
    return out


def headline(c: dict, prefix: str) -> dict:
    """A comparison's numbers for a manifest, named after the two models and prefixed with where they were
    measured (dev_rm_ppo, dev_kl_to_sft, ...), so nobody mistakes them for another split's."""
    cand, base = c["candidate"], c["baseline"]
    out = {f"{prefix}prompts": c["prompts"], f"{prefix}answers": c["answers"]}
    if "win_rate_rm" in c:
        out.update({f"{prefix}win_rate_rm": c["win_rate_rm"]["win_rate"], f"{prefix}rm_{cand}": c["rm_candidate"],
                    f"{prefix}rm_{base}": c["rm_baseline"]})
    if "kl" in c:
        out[f"{prefix}kl_to_{base}"] = c["kl"]["k1_mean"]
    if "gold_difference" in c:
        out.update({f"{prefix}gold_{cand}": c["gold_candidate"], f"{prefix}gold_{base}": c["gold_baseline"],
                    f"{prefix}gold_difference": c["gold_difference"]["mean"],
                    f"{prefix}gold_win_rate": c["win_rate_gold"]["win_rate"]})
    if c.get("rm_gold_spearman") is not None:
        out[f"{prefix}rm_gold_spearman"] = c["rm_gold_spearman"]
    if "quality_bar" in c:
        out.update({f"{prefix}gold_state": c["quality_bar"]["gold_state"], "verdict": c["quality_bar"]["verdict"]})
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
