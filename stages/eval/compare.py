"""The evaluation's per-model results; the comparison of the candidate with each baseline is the judge's
(pipeline/judge/comparison.py `compare_answers`, the one PPO's report, the align report and compare use)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.judge.comparison import ModelAnswers, summarise


@dataclass
class Evaluated:
    """One model of the evaluation: where it came from, its answers (the judge's) and its LM numbers."""

    name: str
    path: str
    record: dict
    answers: ModelAnswers | None = None  # set by run_model
    lm: dict | None = None
    sweep: list[dict] | None = None  # the held-out prompt continued at several temperatures
    logprobs_of_candidate: list[list[float]] | None = None  # the candidate's answers under this model


def summarise_model(ev: Evaluated) -> dict:
    return {"path": ev.path, "fingerprint": ev.record.get("fingerprint"), "lm": ev.lm, **summarise(ev.answers)}


def samples(evaluated: list[Evaluated], prompts: list, golds: list, n: int) -> list[dict]:
    rows = []
    for i, (prompt, gold) in enumerate(zip(prompts[:n], golds)):
        question = " ".join(m["content"] for m in prompt if m.get("role") == "user")
        row = {"prompt": question, "gold": gold, "answers": {}}
        for ev in evaluated:
            a = ev.answers
            row["answers"][ev.name] = {"text": a.answers[i], "rm": a.rm_scores[i] if a.rm_scores else None,
                                       "gold": a.gold_scores[i] if a.gold_scores else None}
        rows.append(row)
    return rows


def write_answers(path, prompts: list, golds: list, answered: list[ModelAnswers]) -> None:
    """answers.jsonl: each prompt with its gold answer and every model's answer and scores."""
    with open(path, "w") as f:
        for i, (prompt, gold) in enumerate(zip(prompts, golds)):
            row = {"prompt": prompt, "gold": gold}
            for a in answered:
                row[a.name] = {"answer": a.answers[i], "ended": a.ended[i], "rm": a.rm_scores[i] if a.rm_scores else None,
                               "gold": a.gold_scores[i] if a.gold_scores else None}
            f.write(json.dumps(row) + "\n")


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

