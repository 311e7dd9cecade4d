"""report.md / report.json of the rank stage: what was ranked, how much the labeler agrees with the
gold order (or people with each other), and the answers' gold scores by rank position."""

from __future__ import annotations

import json
from pathlib import Path

from data.gold import gold_score
from pipeline.judge.stats import mean_std


def gold_by_position(rankings: list[dict], candidates: dict[str, dict]) -> dict[str, dict]:
    """Mean gold score of the answers at each rank position (1 = best; tied answers share a position)."""
    by_pos: dict[int, list[float]] = {}
    for r in rankings:
        gold = candidates[r["prompt_id"]].get("gold")
        if gold is None:
            continue
        for place, tier in enumerate(r["groups"], 1):
            by_pos.setdefault(place, []).extend(gold_score(r["responses"][i], gold) for i in tier)
    return {str(p): {"answers": len(v), "mean_gold": mean_std(v)[0]} for p, v in sorted(by_pos.items())}


def gold_by_temperature(candidates: list[dict]) -> dict[str, dict]:
    """Mean gold score and answers kept (after merging) per sampling temperature."""
    by_t: dict[float, list[float]] = {}
    for c in candidates:
        if c.get("gold") is None:
            continue
        for text, t in zip(c["responses"], c["temperatures"]):
            by_t.setdefault(t, []).append(gold_score(text, c["gold"]))
    return {str(t): {"answers": len(v), "mean_gold": mean_std(v)[0]} for t, v in sorted(by_t.items())}


def _f(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def write_report(out_dir: Path, summary: dict) -> None:
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    s = summary
    lines = [f"# Rank: {s['run']} round {s['round']}", "",
             f"The policy `{s['policy']}` answered {s['prompts']} prompts {s['k']} times each (temperatures "
             f"{', '.join(str(t) for t in s['temperatures'])}); identical answers were merged. "
             f"Labeler: **{s['labeler']}**.", "",
             "| | count |", "|---|---:|",
             f"| prompts sampled | {s['prompts']} |",
             f"| skipped: fewer than 2 distinct answers | {s['skipped']} |",
             f"| distinct answers per kept prompt (mean) | {_f(s['answers_per_prompt'], '.2f')} |",
             f"| ranked (rankings.jsonl records) | {s['ranked']} |",
             f"| no preference: every answer tied | {s['all_tied']} |"]
    if s.get("remaining") is not None:
        lines.append(f"| not ranked yet | {s['remaining']} |")
    lines.append("")
    ag = s.get("agreement") or {}
    if s["labeler"] == "gold":
        lines += [f"Simulated labeler: Plackett-Luce on the gold scores at noise {s['noise']}. Agreement with the "
                  f"noiseless gold order: Kendall tau {_f(ag.get('kendall_tau'))}, pairs in the gold order "
                  f"{_f(ag.get('pair_agreement'))} (over {ag.get('pairs', 0)} pairs the metric tells apart).", ""]
    elif s["labeler"] == "judge":
        lines += [f"Judge `{s.get('judge')}` ({s.get('judge_kind')}). Agreement with the gold order where the "
                  f"prompts have gold answers: Kendall tau {_f(ag.get('kendall_tau'))}, pairs "
                  f"{_f(ag.get('pair_agreement'))}.", ""]
    else:
        people = ag.get("people") or {}
        lines += [f"People: {', '.join(s.get('people') or []) or 'none yet'}. Agreement between people on "
                  f"{people.get('prompts', 0)} prompts ranked by more than one: mean Kendall tau "
                  f"{_f(people.get('mean_tau'))}, pairwise agreement {_f(people.get('pair_agreement'))} "
                  "(the share of answer pairs two people order the same way, a tie agreeing only with a tie; "
                  "per prompt, then over prompts). Agreement with the gold "
                  f"order: Kendall tau {_f(ag.get('kendall_tau'))}.", ""]
    for title, key in (("Gold score by rank position", "gold_by_position"),
                       ("Gold score by sampling temperature", "gold_by_temperature")):
        rows = s.get(key) or {}
        if rows:
            head = "position" if key == "gold_by_position" else "temperature"
            lines += [f"{title}:", "", f"| {head} | answers | mean gold |", "|---:|---:|---:|"]
            lines += [f"| {k} | {v['answers']} | {_f(v['mean_gold'])} |" for k, v in rows.items()]
            lines.append("")
    held = s.get("heldout")
    if held:
        lines += ["## Held-out own answers", "",
                  f"{held['prompts']} held-out prompts (never trained on) answered the same way and ranked by the "
                  f"gold metric without noise: {held['ranked']} rankings in heldout_rankings.jsonl, "
                  f"{held['skipped']} skipped, {held['all_tied']} all tied. The reward stage reports its "
                  "accuracy on them and the Spearman correlation of its score with gold over "
                  "heldout_candidates.jsonl.", ""]
    lines += [f"Wall time {s['wall_time_s']:.0f} s (sampling {s['sampling_s']:.0f} s).", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
