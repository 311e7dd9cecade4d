"""The evaluation's per-model results and how the candidate is compared with each baseline."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.judge.comparison import ModelAnswers, compare_models
from pipeline.judge.stats import mean_std


@dataclass
class Evaluated:
    """One model's results: where it came from, its answers and their token ids."""

    name: str
    path: str
    record: dict
    vocab_key: int = 0  # hash of the tokenizer's vocabulary: KL needs the same tokens
    prompt_ids: list[list[int]] = field(default_factory=list)
    answer_ids: list[list[int]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    lm: dict | None = None
    rm_scores: list[float] | None = None
    gold_scores: list[float] | None = None
    own_logprobs: list[list[float]] | None = None  # the candidate's answers under itself
    logprobs_of_candidate: list[list[float]] | None = None  # the candidate's answers under this model
    sweep: list[dict] | None = None  # the held-out prompt continued at several temperatures


def compare(candidate: Evaluated, baseline: Evaluated, prompts: list[dict], *, tolerance: float,
            kl_budget: float) -> dict:
    """The candidate against one baseline, by the evaluator the PPO stage uses too."""
    kl, why = None, None
    if candidate.own_logprobs is None:
        why = "greedy answers (eval.temperature=0) are not samples, so they cannot estimate a KL"
    elif baseline.logprobs_of_candidate is not None:
        kl = (candidate.own_logprobs, baseline.logprobs_of_candidate)
    else:
        why = "the two models use different tokenizers, so their log-probabilities do not compare"
    return compare_models(_scored(candidate), _scored(baseline), [p["prompt"] for p in prompts],
                          kl_budget=kl_budget, kl_logprobs=kl, kl_skipped=why, length_tolerance=tolerance)


def _scored(ev: Evaluated) -> ModelAnswers:
    return ModelAnswers(ev.name, ev.answers, ev.rm_scores, ev.gold_scores)


def summarise_model(ev: Evaluated) -> dict:
    words = [len(a.split()) for a in ev.answers]
    tokens = [len(a) for a in ev.answer_ids]
    out = {"path": ev.path, "fingerprint": ev.record.get("fingerprint"), "lm": ev.lm,
           "answer_words_mean": mean_std(words)[0], "answer_tokens_mean": mean_std(tokens)[0],
           "ended_with_eos": sum(ev.ended) / max(1, len(ev.ended))}
    for key, scores in (("rm", ev.rm_scores), ("gold", ev.gold_scores)):
        if scores is not None:
            m, s = mean_std(scores)
            out[f"{key}_mean"], out[f"{key}_std"] = m, s
    return out


def samples(evaluated: list[Evaluated], prompts: list[dict], n: int) -> list[dict]:
    rows = []
    for i, p in enumerate(prompts[:n]):
        question = " ".join(m["content"] for m in p["prompt"] if m.get("role") == "user")
        row = {"prompt": question, "gold": p.get("gold"), "answers": {}}
        for ev in evaluated:
            row["answers"][ev.name] = {"text": ev.answers[i],
                                       "rm": ev.rm_scores[i] if ev.rm_scores else None,
                                       "gold": ev.gold_scores[i] if ev.gold_scores else None}
        rows.append(row)
    return rows


def headline(report: dict) -> dict:
    """The few numbers worth a manifest: per-model LM/RM/gold means, the main comparison."""
    out = {}
    if (report.get("lm_baseline") or {}).get("lm"):
        out["bigram/bits_per_byte"] = report["lm_baseline"]["lm"]["bits_per_byte"]
    for name, m in report["models"].items():
        for key in ("rm_mean", "gold_mean"):
            if m.get(key) is not None:
                out[f"{name}/{key}"] = m[key]
        if m.get("lm"):
            out[f"{name}/bits_per_byte"] = m["lm"]["bits_per_byte"]
    if report["comparisons"]:
        main = report["comparisons"][-1]
        for key in ("win_rate_rm", "win_rate_gold", "win_rate_rm_matched_length"):
            if key in main:
                out[f"{main['candidate']}_vs_{main['baseline']}/{key}"] = main[key]["win_rate"]
        if "kl" in main:
            out[f"{main['candidate']}_vs_{main['baseline']}/kl"] = main["kl"]["k1_mean"]
    return out

