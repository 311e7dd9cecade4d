"""The RLHF quality bar, judged by one function for the PPO stage and for evaluation.

The tuned model passes when, against its starting point on at least MIN_PROMPTS (30) prompts it was
not trained on:
  - the reward model prefers it: RM win rate >= MIN_WIN_RATE (0.65);
  - it stays near its starting point: mean KL per answer within the budget (`ppo.kl_budget`);
  - the gold metric went up: the 95% interval of the paired gold difference (Student t, counted over
    prompts) lies above zero.

The gold metric is what the reward model stands in for, so the verdict always names its state:
  "gold up"                   the paired interval lies above zero;
  "gold level"                the interval spans zero (and the point estimate did not fall while the
                              reward model's score rose);
  "reward over-optimisation"  the interval lies below zero, or the point estimate fell while the
                              reward model's score rose: the policy pleases the proxy, not the goal;
  "too few prompts"           fewer than MIN_PROMPTS prompts: the numbers are shown, nothing is judged.

Why "gold level" does NOT meet the bar: the point of RLHF is a better model, and a verdict must never
claim more than its interval. A gold difference whose interval spans zero is consistent with "no
better", so "quality bar met" would claim an improvement the data does not show.

Why no gold metric does NOT meet the bar either: the RM win rate cannot show an improvement, the reward
model being the very thing the policy was optimised against. Without a gold metric (or another held-out
judge) the verdict says that an improvement cannot be shown.

Why a minimum number of prompts: on a handful of prompts the interval rests on a spread measured on a
handful of numbers, one odd prompt moves it, and with one prompt there is no interval at all. So below
MIN_PROMPTS the verdict says "too few prompts to judge (N < 30)" instead of a gold state.
"""

from __future__ import annotations

import math

MIN_WIN_RATE = 0.65
MIN_PROMPTS = 30
GOLD_UP, GOLD_LEVEL, OVER_OPTIMISATION = "gold up", "gold level", "reward over-optimisation"
TOO_FEW_PROMPTS = "too few prompts"
_NO_GOLD = "no gold metric: without one (or another held-out judge) an improvement cannot be shown"


def gold_state(gold_difference: dict | None, rm_rose: bool) -> str | None:
    """Which gold state a paired gold difference ({"prompts", "mean", "ci_low", "ci_high"}) is in;
    None when there is no gold metric."""
    if not gold_difference or gold_difference.get("mean") is None:
        return None
    if gold_difference["prompts"] < MIN_PROMPTS:
        return TOO_FEW_PROMPTS
    if gold_difference["ci_high"] < 0 or (rm_rose and gold_difference["mean"] < 0):
        return OVER_OPTIMISATION
    if gold_difference["ci_low"] > 0:
        return GOLD_UP
    return GOLD_LEVEL


def quality_verdict(*, win_rate: float | None, rm_candidate: float, rm_baseline: float, kl: float | None,
                    kl_budget: float, gold_difference: dict | None = None, baseline: str = "SFT") -> dict:
    """The verdict: {"met": bool, "gold_state": str | None, "verdict": one line naming the gold state}."""
    rm_rose = rm_candidate is not None and rm_baseline is not None and rm_candidate > rm_baseline
    state = gold_state(gold_difference, rm_rose)
    problems = []
    if win_rate is None or not math.isfinite(win_rate) or win_rate < MIN_WIN_RATE:
        problems.append(f"RM win rate {_num(win_rate, '.2f')} < {MIN_WIN_RATE}")
    if kl is not None and not (math.isfinite(kl) and kl <= kl_budget):
        problems.append(f"KL {_num(kl, '.2f')} over the budget {kl_budget}")
    why = f" ({'; '.join(problems)})" if problems else ""
    met = state == GOLD_UP and not problems
    if state is None:
        line = f"quality bar NOT met{why}: {_NO_GOLD}"
    elif state == TOO_FEW_PROMPTS:
        line = (f"too few prompts to judge ({gold_difference['prompts']} < {MIN_PROMPTS}): "
                f"{_gold_numbers(gold_difference, baseline)}; quality bar NOT met{why}")
    elif state == OVER_OPTIMISATION:
        line = (f"{state}: {_gold_numbers(gold_difference, baseline)} while the RM score "
                f"{'rose' if rm_rose else 'did not rise'} ({rm_candidate:+.3f} vs {rm_baseline:+.3f}); "
                f"quality bar NOT met{why}")
    else:
        judged = "met" if met else f"NOT met{why}"
        line = f"quality bar {judged}: {state}: {_gold_numbers(gold_difference, baseline)}"
    return {"met": met, "gold_state": state, "verdict": line}


def _gold_numbers(d: dict, baseline: str) -> str:
    interval = ("no interval from one prompt" if d["ci_low"] is None
                else f"95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}")
    return f"gold vs {baseline} {d['mean']:+.3f}, {interval} over {d['prompts']} prompts"


def _num(x: float | None, fmt: str) -> str:
    return "none" if x is None else format(x, fmt)
