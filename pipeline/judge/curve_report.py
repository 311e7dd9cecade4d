"""The over-optimisation curve in a stage's report (PPO's, GRPO/RLOO's): the manifest's account of it, a plot of
proxy and gold against d = sqrt(KL) with Gao et al.'s fitted forms, and a markdown section with every point, the
fits, their peaks and which update was kept and why. The curve itself: pipeline/judge/overoptimisation.py."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.judge.overoptimisation import Fit, distance

CURVE_PNG = "curve.png"


def curve_headline(c: dict) -> dict:
    """The manifest's account of the curve: which update was kept, the best and last development gold, where
    the fitted gold peaks (KL per answer, nats) and whether training stopped early."""
    if not c:
        return {}
    out = {"keep": c["keep"], "kept_step": c["kept_step"], "kept_why": c["kept_why"], "best_step": c["best"]["step"],
           "last_step": c["last"]["step"]}
    for name in ("best", "last"):
        for k in ("gold", "proxy", "kl_k1"):
            if c[name].get(k) is not None:
                out[f"curve_{name}_{k}"] = c[name][k]
    rl = (c["fits"].get("gold") or {}).get("rl")
    if rl and rl["peak_kl"] is not None:
        out["curve_gold_peak_kl"] = rl["peak_kl"]
    if c["stopped_at"] is not None:
        out["stopped_at"] = c["stopped_at"]
    return out


def plot_curve(c: dict, out_dir: Path) -> str | None:
    """Proxy and gold gains over the start against d = sqrt(KL), with both fitted forms: a PNG in the artifact
    (its name), None with fewer than two points."""
    if not c or len(c["points"]) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("proxy", "gold") if n in c["fits"]]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    d = [distance(pt["kl_k1"]) for pt in c["points"]]
    top = max(d) * 1.3 or 1.0
    grid = [top * i / 100 for i in range(101)]
    for ax, name in zip(axes[0], names):
        start = c["points"][0][name]
        ax.plot(d, [pt[name] - start for pt in c["points"]], "o", color="black", label="evaluations")
        for form, style in (("rl", "-"), ("bon", "--")):
            f = c["fits"][name][form]
            if f:
                fit = Fit(form, f["alpha"], f["beta"], f["points"], f["rmse"])
                ax.plot(grid, [fit.gain(x) for x in grid], style, label=_form_label(form))
        kept = next(pt for pt in c["points"] if pt["step"] == c["kept_step"])
        ax.axvline(distance(kept["kl_k1"]), color="grey", linestyle=":", label=f"kept (update {c['kept_step']})")
        ax.set_xlabel("d = sqrt(KL to SFT per answer, k1)")
        ax.set_ylabel(f"{name} gain over SFT")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / CURVE_PNG, dpi=100)
    plt.close(fig)
    return CURVE_PNG


def _form_label(form: str) -> str:
    return "RL fit: d(α − β log d)" if form == "rl" else "best-of-n fit: d(α − βd)"


def _num(x, fmt: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:{fmt}}"


def render_curve(c: dict, plot: str | None) -> list[str]:
    """The curve's section of report.md: which update was kept and why, the points, the fits and their peaks."""
    if not c:
        return []
    lines = ["## The over-optimisation curve (development prompts)", "",
             f"**Kept: update {c['kept_step']}** ({c['kept_why']}).", "",
             f"Every point answers the same {c['prompts']} development prompts under one seed; "
             f"gold is the held-out judge's score (judge.gold={c.get('judge', 'demo')}); "
             "win rates are over SFT's answers to them (update 0), ties count half; KL(policy ‖ SFT) is measured on "
             "these answers, k1 and k3 per answer (summed over its tokens) and k3 per token; d = √(k1 per answer), the "
             "KL every report quotes (its mean over 64 answers is not pushed below 0 by noise once the policy has moved). "
             "The kept point was chosen on these prompts, so the development report below is not a fresh measure "
             "of it: evaluation's test prompts are.", ""]
    if plot:
        lines += [f"![proxy and gold against d]({plot})", ""]
    lines += ["| update | d | proxy | gold | win rate (RM) | win rate (gold) | KL k1 / k3 per answer | KL k3 per token "
              "| length (tokens) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pt in c["points"]:
        mark = " **(kept)**" if pt["step"] == c["kept_step"] else ""
        lines.append(f"| {pt['step']}{mark} | {distance(pt['kl_k1']):.2f} | {_num(pt['proxy'])} | {_num(pt['gold'])} "
                     f"| {_num(pt['win_rate_proxy'], '.2f')} | {_num(pt['win_rate_gold'], '.2f')} "
                     f"| {pt['kl_k1']:.2f} / {pt['kl_k3']:.2f} | {pt['kl_k3_token']:.3f} | {pt['length']:.1f} |")
    lines += ["", "Fits of the gain over SFT (Gao et al. 2023; least squares over the points with d > 0):", "",
              "| score | form | α | β | peak d | peak KL | gain at peak | rmse |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, forms in c["fits"].items():
        for form, f in forms.items():
            if f is None:
                lines.append(f"| {name} | {_form_label(form)} | — | — | — | — | — | — |")
                continue
            lines.append(f"| {name} | {_form_label(form)} | {f['alpha']:+.4f} | {f['beta']:+.4f} | {_num(f['peak_d'], '.2f')} "
                         f"| {_num(f['peak_kl'], '.2f')} | {_num(f['peak_gain'], '+.4f')} | {f['rmse']:.4f} |")
    lines += ["", "A form without a peak (β ≤ 0) never turns down over the range measured. With a handful of "
              "noisy points the fitted peak is a rough guide, not a measurement.", ""]
    return lines
