"""report.md of the reward stage: held-out metrics, their history, data counts, reward
statistics for PPO and a few held-out examples with the model's scores."""

from __future__ import annotations

from pathlib import Path

import torch

from stages.reward.best_of_n import PICKS
from stages.reward.heldout import Heldout


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _win(w: dict) -> str:
    return f"{w['win_rate']:.3f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}]"


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def _content(messages: list[dict]) -> str:
    return " / ".join(m.get("content") or "" for m in messages)


def examples_md(h: Heldout, scores: torch.Tensor, n: int = 4) -> list[str]:
    """K-way prompts with each answer's human rank and score, or pairs with both scores."""
    s = scores.tolist()
    lines = []
    if h.rankings:
        for tiers in h.rankings[:n]:
            lines += [f"**Prompt:** {_short(_content(h.prompts[tiers[0][0]]), 300)}", "",
                      "| human rank | score | answer |", "|---:|---:|---|"]
            lines += [f"| {rank + 1} | {s[i]:+.3f} | {_short(_content(h.responses[i]))} |"
                      for rank, tier in enumerate(tiers) for i in tier]
            lines.append("")
    else:
        for c, r, _ in h.pairs[:n]:
            lines += [f"**Prompt:** {_short(_content(h.prompts[c]), 300)}", "",
                      "| | score | answer |", "|---|---:|---|",
                      f"| chosen | {s[c]:+.3f} | {_short(_content(h.responses[c]))} |",
                      f"| rejected | {s[r]:+.3f} | {_short(_content(h.responses[r]))} |", ""]
    return lines


def feedback_md(fb: dict | None) -> list[str]:
    """What the feedback store (reward.data=...+feedback, data/feedback.py) gave: rankings, pairs and ties
    counted apart from the other sources, ratings and what became of them, agreement between people, and
    the accuracy on its held-out conversations when there are enough rankings to hold some out."""
    if not fb:
        return []
    lines = ["## Feedback from use", "",
             "What people ranked or rated in `make serve` and `make chat`. A ranking gives pairs as the rank stage's "
             "do (tied answers none); within one conversation every answer rated good is paired with every answer "
             "rated bad; a rating without an opposite one in its conversation gives no pair.", "",
             "| | count |", "|---|---:|"]
    rows = (("rankings", "rankings"), ("ranking_pairs", "pairs from rankings (trained on)"),
            ("tied_answer_pairs", "answer pairs tied by a ranking (no pair)"),
            ("all_tied_rankings", "rankings with every answer tied"), ("ratings", "ratings"),
            ("rated_good", "rated good"), ("rated_bad", "rated bad"), ("rating_pairs", "pairs from ratings (trained on)"),
            ("rated_answers_without_opposite", "rated answers without an opposite rating (no pair)"),
            ("heldout_rankings", "rankings held out (never trained on)"),
            ("unreadable_lines", "unreadable lines (torn by a kill) skipped"))
    lines += [f"| {label} | {fb.get(k, 0)} |" for k, label in rows]
    lines.append("")
    held = fb.get("heldout")
    if held:
        lines.append(f"On the {fb['heldout_rankings']} held-out feedback rankings ({held.get('pairs')} pairs): pairwise "
                     f"accuracy {_fmt(held.get('accuracy'))}, Kendall tau {_fmt(held.get('kendall_tau'))}.")
    else:
        lines.append(f"Too few feedback rankings to hold some out ({fb.get('rankings', 0)}, fewer than "
                     f"{fb.get('heldout_min_rankings')}): every one is trained on and there is no held-out accuracy "
                     "on feedback.")
    ag = fb.get("agreement") or {}
    lines += ["", f"People: {', '.join(fb.get('people') or []) or 'none'}. Agreement between people on "
                  f"{ag.get('prompts', 0)} conversations whose same answers more than one of them ranked: mean Kendall "
                  f"tau {_fmt(ag.get('mean_tau'))}, pairwise agreement {_fmt(ag.get('pair_agreement'))} (the share "
                  "of answer pairs two people order the same way, a tie agreeing only with a tie).", ""]
    return lines


def write_report(path: Path, *, title: str, feedback: dict | None = None, final: dict, history: list[dict], counts: dict,
                 heldout: Heldout, scores: torch.Tensor, settings: dict, own_answers: dict | None = None,
                 ensemble: list[str] | None = None) -> None:
    gaps = sorted(int(k[len("accuracy_gap"):]) for k in final if k.startswith("accuracy_gap"))
    lines = [f"# {title}", "", "## Held-out evaluation", "",
             "| metric | value |", "|---|---:|",
             f"| pairs | {final.get('pairs')} |",
             f"| pairwise accuracy | {_fmt(final.get('accuracy'))} |",
             f"| mean margin (chosen - rejected) | {_fmt(final.get('mean_margin'))} |"]
    if "kendall_tau" in final:
        lines.append(f"| Kendall tau vs human ranking ({final.get('rankings')} prompts) | "
                     f"{_fmt(final.get('kendall_tau'))} |")
    lines += [f"| accuracy, chosen shorter than rejected ({final.get('pairs_chosen_shorter')} pairs) | "
              f"{_fmt(final.get('accuracy_chosen_shorter'))} |",
              f"| accuracy, chosen longer than rejected ({final.get('pairs_chosen_longer')} pairs) | "
              f"{_fmt(final.get('accuracy_chosen_longer'))} |", ""]
    if gaps:
        lines += ["Accuracy by rank distance (how far apart the human ranked the two answers):", "",
                  "| rank distance | pairs | accuracy |", "|---:|---:|---:|"]
        lines += [f"| {g} | {final.get(f'pairs_gap{g}')} | {_fmt(final.get(f'accuracy_gap{g}'))} |" for g in gaps]
        lines.append("")
    by_pair = final.get("accuracy_by_rank_pair") or {}
    if by_pair:
        lines += ["Accuracy for each pair of human ranks (\"1>3\": the best answer against the third):", "",
                  "| ranks | " + " | ".join(by_pair) + " |", "|---|" + "---:|" * len(by_pair),
                  "| accuracy | " + " | ".join(_fmt(v) for v in by_pair.values()) + " |", ""]
    if len(history) > 1:
        lines += ["During training:", "", "| step | accuracy | mean margin | Kendall tau |", "|---:|---:|---:|---:|"]
        lines += [f"| {h['step']} | {_fmt(h.get('accuracy'))} | {_fmt(h.get('mean_margin'))} | "
                  f"{_fmt(h.get('kendall_tau'))} |" for h in history]
        lines.append("")
    if own_answers:
        lines += ["## The policy's own answers to held-out prompts", "",
                  "Answers the policy sampled for held-out prompts (the rank stage's heldout_*.jsonl; never trained "
                  "on), ranked by the gold metric without noise. Spearman: the reward against the gold metric over "
                  "every answer -- can PPO, which asks the reward model about such answers, improve gold?", "",
                  "| rank artifact | policy | rankings | pairwise accuracy | Kendall tau | answers | Spearman(RM, gold) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {n} | {m.get('policy')} | {m.get('rankings', 0)} | {_fmt(m.get('accuracy'))} | "
                  f"{_fmt(m.get('kendall_tau'))} | {m.get('answers', 0)} | {_fmt(m.get('spearman_gold'))} |"
                  for n, m in own_answers.items()]
        lines.append("")
        bon = {n: m["best_of_n"] for n, m in own_answers.items() if m.get("best_of_n")}
        if bon:
            lines += ["### Best of n: what choosing by this reward model wins", "",
                      "For each held-out prompt, one answer at the lowest sampling temperature stands for the policy's "
                      "answer; another of the same prompt's answers is chosen and the two are compared by the gold "
                      "metric, as evaluation compares PPO with SFT (gold win rate, ties half; 95% interval over "
                      "prompts). Chosen blindly (the expectation over the other answers): the floor. Chosen by this "
                      "reward model: roughly what a policy that only learned this model's preferences among answers "
                      "it already writes would win, with no PPO run. Chosen by gold: the most those answers allow. "
                      "Gap closed: how far from the floor toward that ceiling the reward model's choice gets; near 0 "
                      "it leaves PPO nothing to gain on gold, well below 1 it is what limits PPO. Floor and ceiling "
                      "depend on rank.k and rank.temperatures: compare runs that share them.", "",
                      "| rank artifact | prompts | answers per prompt | blind | reward model | gold (the ceiling) "
                      "| gap closed |", "|---|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {n} | {b['prompts']} | {b['answers_per_prompt']:.1f} | "
                      + " | ".join(_win(b[k]) for k in PICKS) + f" | {_fmt(b['gap_closed'])} |"
                      for n, b in bon.items()]
            lines.append("")
            unusable = {n: b["temperatures_unusable"] for n, b in bon.items() if b.get("temperatures_unusable")}
            lines += [f"{n}: {k} prompts had no usable temperature list; each of their answers took a turn as the "
                      "standing one." for n, k in unusable.items()] + ([""] if unusable else [])
    lines += ensemble or []  # reward.ensemble > 1: stages/reward/ensemble.ensemble_report
    lines += feedback_md(feedback)
    lines += ["## Training data", "", "| | count |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in counts.items()]
    lines += ["", "## Settings", ""] + [f"- {k}: `{v}`" for k, v in settings.items()] + [""]
    lines += ["## Held-out examples", ""] + examples_md(heldout, scores)
    path.write_text("\n".join(lines) + "\n")
