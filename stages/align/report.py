"""What an alignment stage shows when it finishes: the tuned model against SFT on the development prompts
PPO reports on (the rule of data/report_prompts.py), by the judge every report uses (pipeline/judge):
the comparison in report.json and the manifest, answers side by side in samples.md. The verdict across
methods is `make compare`'s (stages/compare), on the test prompts."""

from __future__ import annotations

from data.gold import gold_score
from data.report_prompts import ReportPrompts
from pipeline.judge.answering import Sampling
from pipeline.judge.comparison import ModelAnswers, summary_line
from pipeline.judge.curve_report import render_curve
from pipeline.judge.evaluate import RewardJudge, judge_pair


def sampling(cfg, method: str) -> Sampling:
    """The report samples as the method's section says (GRPO and RLOO: as they sampled in training)."""
    s = getattr(cfg, method)
    return Sampling(temperature=s.temperature, max_new_tokens=s.max_new_tokens, seed=cfg.run.seed,
                    top_k=getattr(s, "top_k", 0), top_p=getattr(s, "top_p", 1.0), section=method)


def heldout_report(policy, sft, tokenizer, chosen: ReportPrompts, sampling: Sampling, *, method: str,
                   reward: RewardJudge | None, kl_budget: float, gold=None) -> tuple[dict, list[dict]]:
    """(the comparison with SFT, rows for samples.md); ({}, []) without development prompts. RM scores are
    in PPO's units (normalised by the reward statistics), as GRPO and RLOO were rewarded; gold by the held-out
    judge (judge.gold; the demo's gold metric when None)."""
    if not chosen.prompts:
        return {}, []
    comparison, tuned, base = judge_pair(policy, sft, tokenizer, chosen.prompts, chosen.golds, sampling,
                                         names=(method, "sft"), reward=reward, gold=gold or gold_score, kl_budget=kl_budget)
    comparison.pop("kl_per_answer", None)
    rows = [{"prompt": p[-1]["content"], "gold": g, "answers": [_shown(a, i) for a in (tuned, base)]}
            for i, (p, g) in enumerate(zip(chosen.prompts, chosen.golds))]
    report = {"split": chosen.split, "prompts_source": chosen.source, "answers_per_prompt": chosen.samples,
              **comparison}
    return report, rows


def _shown(a: ModelAnswers, i: int) -> dict:
    return {"name": a.name, "text": a.answers[i], "rm": a.rm_scores[i] if a.rm_scores else None}


def write_samples(path, method: str, report: dict, rows: list[dict], why_none: str, shown: int = 8, *,
                  curve: dict | None = None, plot: str | None = None) -> None:
    """samples.md: the comparison with SFT, the over-optimisation curve (GRPO/RLOO) and answers side by side."""
    lines = [f"# {method.upper()} samples on the development prompts", ""]
    if report:
        lines += [summary_line(report, "development prompts"), ""]
        if "quality_bar" in report:
            lines += [f"**Verdict:** {report['quality_bar']['verdict']}", ""]
    else:
        lines += [f"No report: {why_none}.", ""]
    lines += render_curve(curve or {}, plot)
    for i, row in enumerate(rows[:shown]):
        lines += [f"## {i + 1}. {row['prompt'].splitlines()[0][:100]}", ""]
        if row.get("gold"):
            lines += [f"*Gold:* {row['gold']}", ""]
        for a in row["answers"]:
            score = "" if a["rm"] is None else f" (reward {a['rm']:+.2f})"
            lines += [f"**{a['name']}**{score}: {a['text'] or '(empty)'}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
