"""The RLHF quality bar, judged by one function for the PPO stage and for evaluation.

The tuned model passes when, against its starting point on prompts it was not trained on:
  - the reward model prefers it: RM win rate >= MIN_WIN_RATE (0.65);
  - it stays near its starting point: mean KL per answer within the budget (`ppo.kl_budget`);
  - the gold metric went up: the 95% interval of the paired gold difference lies above zero.

The gold metric is what the reward model stands in for, so the verdict always names its state:
  "gold up"                   the paired interval lies above zero;
  "gold level"                the interval spans zero (and the point estimate did not fall while the
                              reward model's score rose);
  "reward over-optimisation"  the interval lies below zero, or the point estimate fell while the
                              reward model's score rose: the policy pleases the proxy, not the goal.

Why "gold level" does NOT meet the bar: the point of RLHF is a better model, and a verdict must never
claim more than its interval. A gold difference whose interval spans zero is consistent with "no
better", so "quality bar met" would claim an improvement the data does not show. The RM win rate alone
cannot show it either: the reward model is the thing being optimised against. So "gold level" is
reported as what it is: the RM is pleased, and the gold metric did not measurably move. Without gold
answers the bar is judged on the reward model and KL alone, and the line says so ("no gold metric").
"""

from __future__ import annotations

import math

MIN_WIN_RATE = 0.65
GOLD_UP, GOLD_LEVEL, OVER_OPTIMISATION = "gold up", "gold level", "reward over-optimisation"


def gold_state(gold_difference: dict | None, rm_rose: bool) -> str | None:
    """Which of the three gold states a paired gold difference ({"mean", "ci_low", "ci_high"}) is in;
    None when there is no gold metric."""
    if not gold_difference or gold_difference.get("mean") is None:
        return None
    if gold_difference["ci_high"] < 0 or (rm_rose and gold_difference["mean"] < 0):
        return OVER_OPTIMISATION
    if gold_difference["ci_low"] > 0:
        return GOLD_UP
    return GOLD_LEVEL


def quality_verdict(*, win_rate: float | None, rm_candidate: float, rm_baseline: float, kl: float | None,
                    kl_budget: float, gold_difference: dict | None = None, baseline: str = "SFT") -> dict:
    """The verdict: {"met": bool, "gold_state": str | None, "verdict": one line naming the gold state}."""
    rm_rose = rm_candidate > rm_baseline
    state = gold_state(gold_difference, rm_rose)
    problems = []
    if win_rate is None or not math.isfinite(win_rate) or win_rate < MIN_WIN_RATE:
        problems.append(f"RM win rate {_num(win_rate, '.2f')} < {MIN_WIN_RATE}")
    if kl is not None and not (math.isfinite(kl) and kl <= kl_budget):
        problems.append(f"KL {_num(kl, '.2f')} over the budget {kl_budget}")
    if state is None:
        gold = "no gold metric"
    else:
        d = gold_difference
        gold = (f"{state}: gold vs {baseline} {d['mean']:+.3f}, 95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}"
                f" over {d.get('prompts', d.get('n'))} prompts")
        if state == OVER_OPTIMISATION:
            gold += f" while the RM score {'rose' if rm_rose else 'did not rise'} ({rm_candidate:+.3f} vs {rm_baseline:+.3f})"
    met = not problems and state in (GOLD_UP, None)
    why = f" ({'; '.join(problems)})" if problems else ""
    if met:
        line = f"quality bar met: {gold}"
    elif state == OVER_OPTIMISATION:
        line = f"{gold}; quality bar NOT met{why}"
    else:
        line = f"quality bar NOT met{why}: {gold}"
    return {"met": met, "gold_state": state, "verdict": line}


def _num(x: float | None, fmt: str) -> str:
    return "none" if x is None else format(x, fmt)
