"""The RLHF quality bar, judged the same way by the PPO stage and by evaluation: the tuned model
beats its starting point by the reward model, stays within the KL budget, and the gold metric
(when the data has one) does not fall. A rising RM score with a falling gold metric is called
what it is: reward over-optimisation."""

from __future__ import annotations

MIN_WIN_RATE = 0.65


def quality_verdict(*, win_rate: float | None, rm_candidate: float, rm_baseline: float, kl: float | None,
                    kl_budget: float, gold_candidate: float | None = None, gold_baseline: float | None = None,
                    gold_diff_ci: list[float] | None = None, baseline: str = "SFT") -> str:
    """One line. Strict: any fall of the gold metric fails the bar, and the line says whether the fall
    is beyond noise (the paired difference's 95% interval lies below 0) or within it."""
    gold_known = gold_candidate is not None and gold_baseline is not None
    if gold_known and rm_candidate > rm_baseline and gold_candidate < gold_baseline:
        noise = ""
        if gold_diff_ci:
            beyond = "beyond noise" if gold_diff_ci[1] < 0 else "within noise"
            noise = (f"; difference {gold_candidate - gold_baseline:+.3f}, 95% CI {gold_diff_ci[0]:+.3f} to "
                     f"{gold_diff_ci[1]:+.3f}: {beyond}")
        return (f"reward over-optimisation: the reward model prefers the tuned model ({rm_candidate:+.3f} vs "
                f"{rm_baseline:+.3f}) but the gold metric fell ({gold_candidate:.3f} vs {gold_baseline:.3f}{noise})")
    problems = []
    if (win_rate or 0) < MIN_WIN_RATE:
        problems.append(f"win rate {win_rate or 0:.2f} < {MIN_WIN_RATE}")
    if kl is not None and kl > kl_budget:
        problems.append(f"KL {kl:.2f} over the budget {kl_budget}")
    if gold_known and gold_candidate < gold_baseline:
        problems.append(f"gold {gold_candidate:.3f} below {baseline}'s {gold_baseline:.3f}")
    return "quality bar met" if not problems else "quality bar NOT met: " + "; ".join(problems)
