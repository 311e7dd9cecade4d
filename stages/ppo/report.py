"""The PPO stage's report on its development prompts: report.md, and the numbers its manifest carries.

These are the numbers to tune PPO on (kl_coef, episodes, learning rate): the development prompts are
never trained on, and evaluation's prompts (the test set) stay unseen until the final report. The report also
draws the over-optimisation curve (stages/ppo/curve.py) and says which update the stage kept."""

from __future__ import annotations

from pipeline.judge.comparison import headline
from pipeline.judge.curve_report import render_curve


def dev_headline(r: dict) -> dict:
    """The manifest's summary of the development report (prefixed `dev_`, so nobody mistakes it for
    the evaluation's test-set numbers)."""
    return headline(r, "dev_")


def _interval(d: dict, fmt: str = ".2f") -> str:
    return f"{d['ci_low']:{fmt}} to {d['ci_high']:{fmt}}"


def render_report(r: dict, plot: str | None = None) -> str:
    lines = ["# PPO vs SFT on the development prompts", "",
             f"{r['prompts']} development prompts from `{r['prompts_source']}` (never trained on; the place to "
             f"tune PPO), {r['answers_per_prompt']} sampled answers per prompt and model ({r['answers']} pairs). "
             "Every 95% interval counts prompts, not answers. Evaluation's prompts are the test set: its "
             "report (`make eval`) is the one to quote.", ""]
    rows = []
    if "win_rate_rm" in r:
        w = r["win_rate_rm"]
        rows.append(("RM win rate of PPO over SFT", f"{w['win_rate']:.3f} [{_interval(w)}]"))
        rows.append(("RM score, PPO vs SFT", f"{r['rm_candidate']:+.3f} vs {r['rm_baseline']:+.3f}"))
    if "gold_difference" in r:
        d = r["gold_difference"]
        rows.append(("gold metric, PPO vs SFT", f"{r['gold_candidate']:.3f} vs {r['gold_baseline']:.3f}"))
        rows.append(("gold difference (paired)", f"{d['mean']:+.3f} [{_interval(d, '+.3f')}]"))
        w = r["win_rate_gold"]
        rows.append(("gold win rate", f"{w['win_rate']:.3f} [{_interval(w)}]"))
    if r.get("rm_gold_spearman") is not None:
        rows.append(("Spearman(RM score, gold) over both models' answers", f"{r['rm_gold_spearman']:.3f}"))
    if "kl" in r:
        rows.append(("KL(PPO ‖ SFT) per answer (k1 / k3)", f"{r['kl']['k1_mean']:.2f} / {r['kl']['k3_mean']:.2f} nats"))
    rows.append(("answer length, PPO vs SFT", f"{r['words_candidate']:.1f} vs {r['words_baseline']:.1f} words"))
    lines += ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows] + [""]
    if "quality_bar" in r:
        lines += [f"**Verdict:** {r['quality_bar']['verdict']}", ""]
    lines += render_curve(r.get("curve") or {}, plot)
    return "\n".join(lines)
