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


def people_line(people: dict) -> str:
    return (f"mean Kendall tau {_f(people.get('mean_tau'))}, pairwise agreement {_f(people.get('pair_agreement'))} "
            "(the share of answer pairs two people order the same way, a tie agreeing only with a tie; per prompt, "
            "then over prompts)")


def feedback_lines(s: dict) -> list[str]:
    """A round whose rankings came from the feedback store (rank.feedback_from_round): nothing was sampled."""
    c = s["feedback"]
    people = (s.get("agreement") or {}).get("people") or {}
    return [f"# Rank: {s['run']} round {s['round']}, from feedback", "",
            f"What people ranked in `make serve` / `make chat` of `{s['policy']}`'s answers, read from `{s['store']}` "
            "(rankings of other models' answers are left out: this round learns where its policy is).", "",
            "| | count |", "|---|---:|",
            f"| rankings in the store | {c['store_rankings']} |",
            f"| of other models' answers (left out) | {c['other_models']} |",
            f"| every answer tied (no preference) | {c['all_tied']} |",
            f"| held out (heldout_rankings.jsonl, never trained on) | {c['heldout']} |",
            f"| ranked (rankings.jsonl records) | {s['ranked']} |",
            f"| conversations | {s['conversations']} |",
            f"| ratings (not rankings: left out) | {c['ratings_left_out']} |",
            f"| unreadable lines skipped | {c['unreadable_lines']} |", "",
            f"People: {', '.join(s.get('people') or []) or 'none'}. Agreement between people on "
            f"{people.get('pair_prompts', 0)} conversations whose same answers more than one of them ranked: "
            f"{people_line(people)}.", "", f"Wall time {s['wall_time_s']:.0f} s.", ""]


def write_report(out_dir: Path, summary: dict) -> None:
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    s = summary
    if s["labeler"] == "feedback":
        (out_dir / "report.md").write_text("\n".join(feedback_lines(s)))
        return
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
                  f"{people.get('prompts', 0)} prompts ranked by more than one: {people_line(people)}. "
                  "Agreement with the gold "
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
