"""The evaluation report's pictures (matplotlib, Agg backend: no display needed).

Each function draws one PNG into the eval artifact and returns its file name, or None when
there is nothing to draw.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Metric names differ between stages (our loops, TRL's Trainer, our PPO); these patterns find them.
CURVES = {  # stage: [(panel title, metric names to plot, names to leave out)]
    "pretrain": [("loss", r"loss$", None)],
    "sft": [("loss", r"loss$", None)],
    "reward": [("accuracy", r"acc", r"gap|chosen|token"), ("rank correlation", r"tau|spearman", None),
               ("loss", r"(^|_)loss$", None)],
    "ppo": [("KL to the reference", r"(^|[/_])kl($|[/_])", r"coef|approx")],
}
PROXY = r"^(objective/|env/|rollout/|train/|eval/)?(score|scores|reward|rewards|rm_score|reward_mean|score_mean)$"
GOLD = r"gold"


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and "step" in r:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def _numeric_keys(rows: list[dict]) -> list[str]:
    keys = []
    for r in rows:
        for k, v in r.items():
            if k not in ("step", "time") and k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return keys


def plot_lm(models: dict, out: Path, baseline: dict | None = None) -> str | None:
    """Bits per byte of each model; the bigram baseline, when there is one, is the first (grey) bar."""
    bars = [("bigram", baseline["lm"], "tab:gray")] if baseline and baseline["lm"].get("bits_per_byte") else []
    bars += [(n, m["lm"], "tab:blue") for n, m in models.items() if m.get("lm") and m["lm"].get("bits_per_byte")]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([b[0] for b in bars], [b[1]["bits_per_byte"] for b in bars], color=[b[2] for b in bars])
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("held-out text")
    return _save(fig, out, "lm.png")


def plot_scores(per_answer: dict, out: Path) -> str | None:
    judges = [j for j in ("rm", "gold") if any(v.get(j) for v in per_answer.values())]
    if not judges:
        return None
    fig, axes = plt.subplots(1, len(judges), figsize=(5 * len(judges), 3.2), squeeze=False)
    for ax, judge in zip(axes[0], judges):
        names = [n for n, v in per_answer.items() if v.get(judge)]
        ax.boxplot([per_answer[n][judge] for n in names], tick_labels=names, showmeans=True)
        ax.set_title("reward-model score" if judge == "rm" else "gold metric (0..1)")
    return _save(fig, out, "scores.png")


def plot_win_rates(comparisons: list[dict], out: Path) -> str | None:
    bars = []
    for c in comparisons:
        for key, label in (("win_rate_rm", "RM"), ("win_rate_rm_matched_length", "RM, matched length"),
                           ("win_rate_gold", "gold"), ("win_rate_gold_matched_length", "gold, matched length")):
            w = c.get(key)
            if w and w.get("win_rate") is not None:
                bars.append((f"{c['candidate']} vs {c['baseline']}: {label}", w))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(bars) + 1.2))
    ys = list(range(len(bars)))[::-1]
    rates = [w["win_rate"] for _, w in bars]
    err = [[r - w["ci_low"] for r, (_, w) in zip(rates, bars)], [w["ci_high"] - r for r, (_, w) in zip(rates, bars)]]
    ax.barh(ys, rates, xerr=err, color="tab:green", alpha=0.7, capsize=3)
    ax.axvline(0.5, color="black", lw=1, ls="--")
    ax.set_yticks(ys, [b[0] for b in bars])
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (ties count half), 95% interval")
    return _save(fig, out, "win_rates.png")


def plot_kl(comparisons: list[dict], out: Path) -> str | None:
    rows = [c for c in comparisons if c.get("kl_per_answer")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for c in rows:
        ax.hist(c["kl_per_answer"], bins=20, alpha=0.5, label=f"KL({c['candidate']} || {c['baseline']})")
    ax.set_xlabel("KL per answer, nats (k1 estimate on the candidate's samples)")
    ax.set_ylabel("answers")
    ax.legend()
    return _save(fig, out, "kl.png")


def plot_length(per_answer: dict, out: Path) -> str | None:
    names = [n for n, v in per_answer.items() if v.get("rm")]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n in names:
        ax.scatter(per_answer[n]["words"], per_answer[n]["rm"], s=10, alpha=0.6, label=n)
    ax.set_xlabel("answer length (words)")
    ax.set_ylabel("reward-model score")
    ax.set_title("does the reward model pay for length?")
    ax.legend()
    return _save(fig, out, "length.png")


def plot_stage_curves(stage: str, rows: list[dict], out: Path) -> str | None:
    keys = _numeric_keys(rows)
    panels = []
    # A metric logged once (a final summary) is a dot, not a curve.
    keys = [k for k in keys if len(_series(rows, k)[0]) > 1] or keys
    for title, pattern, leave_out in CURVES.get(stage, []):
        matched = sorted((k for k in keys if re.search(pattern, k) and not (leave_out and re.search(leave_out, k))),
                         key=len)  # the plain names first
        if matched:
            panels.append((title, matched))
    if stage == "ppo":
        proxy = [k for k in keys if re.search(PROXY, k)] or [k for k in keys if "score" in k and "gold" not in k]
        gold = [k for k in keys if re.search(GOLD, k)]
        if proxy or gold:
            panels.insert(0, ("proxy reward vs gold", proxy[:2] + gold[:2]))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.2), squeeze=False)
    for ax, (title, matched) in zip(axes[0], panels):
        twin = None
        for i, key in enumerate(matched[:4]):
            xs, ys = _series(rows, key)
            target = ax
            if title == "proxy reward vs gold" and re.search(GOLD, key):
                twin = twin or ax.twinx()
                target = twin
                twin.set_ylabel("gold metric", color="tab:orange")
            target.plot(xs, ys, marker="." if len(xs) < 30 else None, label=key,
                        color=("tab:orange", "tab:red")[i % 2] if target is twin else ("C0", "C2", "C4", "C5")[i])
        ax.set_title(f"{stage}: {title}")
        ax.set_xlabel("step")
        handles = ax.get_legend_handles_labels()
        if twin is not None:
            h2 = twin.get_legend_handles_labels()
            handles = (handles[0] + h2[0], handles[1] + h2[1])
        ax.legend(*handles, fontsize=7)
    return _save(fig, out, f"curves_{stage}.png")


def plot_all(report: dict, curves: dict[str, list[dict]], per_answer: dict, out: Path) -> dict[str, str]:
    """Draw every picture that has data; returns {what: file name}."""
    out = Path(out)
    made = {
        "lm": plot_lm(report["models"], out, report.get("lm_baseline")),
        "scores": plot_scores(per_answer, out),
        "win_rates": plot_win_rates(report["comparisons"], out),
        "kl": plot_kl(report["comparisons"], out),
        "length": plot_length(per_answer, out),
    }
    for stage, rows in curves.items():
        made[f"curves_{stage}"] = plot_stage_curves(stage, rows, out)
    return {k: v for k, v in made.items() if v}
