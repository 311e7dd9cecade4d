"""compare.md and the frontier plot: how far each method moved the model (gold difference over SFT)
for how much KL, at what cost, and whether it meets the quality bar."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _f(x, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(d: dict | None, key: str = "win_rate", signed: bool = False) -> str:
    if not d or d.get(key) is None:
        return "n/a"
    return f"{_f(d[key], 2 if not signed else 3, signed)} [{_f(d['ci_low'], 2 if not signed else 3, signed)}, " \
           f"{_f(d['ci_high'], 2 if not signed else 3, signed)}]"


def label_offsets(points: list[tuple[float, float]], *, near: float = 0.06) -> list[tuple[int, int]]:
    """Offsets (in points) for the methods' labels: a label whose point lies within `near` of an earlier
    point's, as a fraction of the plotted span on each axis, goes one line lower, so methods that land in
    the same place (PPO and RLOO often do) stay readable instead of printing over each other."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    xspan = (max(xs + [0.0]) - min(xs + [0.0])) or 1.0
    yspan = (max(ys + [0.0]) - min(ys + [0.0])) or 1.0
    offsets = []
    for i, (x, y) in enumerate(points):
        crowd = sum(abs(x - px) <= near * xspan and abs(y - py) <= near * yspan for px, py in points[:i])
        offsets.append((6, 4 - 11 * crowd))
    return offsets


def plot_frontier(rows: list[dict], out: Path) -> str | None:
    """Gold difference over SFT (95% interval) against KL to SFT, one point per method: up and to the
    left is better; SFT itself sits at (0, 0)."""
    points = [r for r in rows if r.get("kl") and (r.get("gold_difference") or {}).get("mean") is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.axhline(0, color="grey", lw=0.8)
    ax.scatter([0], [0], color="black", marker="s", label="sft")
    offsets = label_offsets([(r["kl"]["k1_mean"], r["gold_difference"]["mean"]) for r in points])
    for r, offset in zip(points, offsets):
        g, kl = r["gold_difference"], r["kl"]["k1_mean"]
        ax.errorbar([kl], [g["mean"]], yerr=[[g["mean"] - g["ci_low"]], [g["ci_high"] - g["mean"]]], fmt="o",
                    capsize=4, label=r["candidate"])
        ax.annotate(r["candidate"], (kl, g["mean"]), textcoords="offset points", xytext=offset)
    ax.set_xlabel("KL(method || SFT) per answer (nats)")
    ax.set_ylabel("gold score - SFT's (paired, 95% CI)")
    ax.set_title("The frontier: gold gained for KL spent")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110)
    plt.close(fig)
    return "frontier.png"


def render(report: dict) -> str:
    lines = [f"# Alignment methods compared: {report['run']}", "",
             *([f"Gold is judged by {report['gold_judge']} (judge.gold).", ""] if report.get("gold_judge") else []),
             f"Each model answered the same {report['prompts']['count']} held-out prompts "
             f"({report['prompts']['source']}; temperature {report['sampling']['temperature']}, up to "
             f"{report['sampling']['max_new_tokens']} tokens, seed {report['seed']}) and is compared with SFT prompt "
             "by prompt. Win rates count ties as half; intervals are 95% over prompts.", "",
             "| method | RM win rate vs SFT | gold win rate vs SFT | gold difference | KL to SFT | answer tokens "
             "(SFT) | wall time | data used |", "|---|---|---|---|---|---|---|---|"]
    sft_tokens = report["sft"]["answer_tokens_mean"]
    for r in report["methods"]:
        kl = r["kl"]["k1_mean"] if r.get("kl") else None
        cost = r["cost"]
        wall = f"{cost['wall_time_s']:.0f} s" if cost.get("wall_time_s") is not None else "n/a"
        lines.append(f"| {r['candidate']} | {_ci(r.get('win_rate_rm'))} | {_ci(r.get('win_rate_gold'))} | "
                     f"{_ci(r.get('gold_difference'), 'mean', signed=True)} | {_f(kl, 2)} | "
                     f"{_f(r['summary']['answer_tokens_mean'], 1)} ({_f(sft_tokens, 1)}) | {wall} | {cost['used']} |")
    lines += ["", "Wall time: training only for DPO, GRPO and RLOO (summed across resumes); the whole stage for "
              "PPO (its final report included)."]
    bon = [r for r in report["methods"] if r.get("best_of_n")]
    if bon:
        n = bon[0]["best_of_n"]
        lines += ["", f"best-of-{n}: SFT answers each prompt {n} times and the reward model keeps its favourite; no "
                  f"training. Its KL is not measured: it is the analytic log n - (n-1)/n = {_f(bon[0]['kl']['k1_mean'], 2)} "
                  "nats, exact without ties and an upper bound with them. Its RM win rate is judged by the model that "
                  "chose: read its gold win rate. A method that does not beat it at a comparable KL bought nothing "
                  "with its training."]
    lines += ["", "## Quality bar (as the PPO stage judges it)", ""]
    for r in report["methods"]:
        verdict = (r.get("quality_bar") or {}).get("verdict") or "not judged (no reward model)"
        lines.append(f"- **{r['candidate']}**: {verdict}")
    if report.get("plot"):
        lines += ["", "## Frontier", "", f"![gold difference against KL]({report['plot']})", "",
                  "Up is a better model by the gold metric; right is further from SFT. A method above and left of "
                  "another gains more for less KL."]
    if report["skipped"]:
        lines += ["", "## Not measured", ""] + [f"- {s}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"
