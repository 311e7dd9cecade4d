"""The quality bar's verdict: it names the gold state its interval is in, and never claims more: not on a
handful of prompts, not without a gold metric."""

import math

import pytest

from pipeline.judge.comparison import ModelAnswers, compare_models
from pipeline.judge.quality_bar import quality_verdict


def gold(mean, lo, hi, prompts=100):
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "prompts": prompts}


def judge(**kw):
    args = {"win_rate": 0.74, "rm_candidate": 0.5, "rm_baseline": 0.0, "kl": 3.0, "kl_budget": 10.0,
            "gold_difference": gold(0.02, 0.01, 0.03), "baseline": "sft"}
    return quality_verdict(**{**args, **kw})


def test_gold_up_with_a_winning_rm_inside_the_kl_budget_meets_the_bar():
    v = judge()
    assert v["met"] and v["gold_state"] == "gold up"
    assert v["verdict"].startswith("quality bar met: gold up") and "+0.010 to +0.030" in v["verdict"]


def test_gold_level_does_not_meet_the_bar_even_when_the_point_estimate_rose():
    v = judge(gold_difference=gold(0.011, -0.002, 0.024))
    assert not v["met"] and v["gold_state"] == "gold level"
    assert v["verdict"].startswith("quality bar NOT met") and "gold level" in v["verdict"]


def test_a_falling_gold_point_estimate_with_the_rm_up_is_over_optimisation_even_within_noise():
    within = judge(gold_difference=gold(-0.009, -0.022, 0.003))
    assert within["gold_state"] == "reward over-optimisation" and not within["met"]
    assert within["verdict"].startswith("reward over-optimisation") and "rose" in within["verdict"]
    # The RM did not rise: a small fall inside the noise is only "level" ...
    assert judge(rm_candidate=-0.1, gold_difference=gold(-0.009, -0.022, 0.003))["gold_state"] == "gold level"
    # ... and a fall beyond the noise is over-optimisation whatever the RM says.
    assert judge(rm_candidate=-0.1, gold_difference=gold(-0.05, -0.08, -0.02))["gold_state"] == \
        "reward over-optimisation"


def test_the_rm_win_rate_and_the_kl_budget_still_decide():
    low = judge(win_rate=0.6)
    assert not low["met"] and "RM win rate 0.60 < 0.65" in low["verdict"] and "gold up" in low["verdict"]
    far = judge(kl=12.0)
    assert not far["met"] and "KL 12.00 over the budget 10.0" in far["verdict"]
    assert not judge(kl=math.nan)["met"]  # ppo.kl_coef=nan must not pass the bar
    assert not judge(win_rate=None)["met"]


def test_without_gold_answers_the_bar_is_not_met_on_the_reward_model_alone():
    v = judge(gold_difference=None)  # RM win rate 0.74, KL inside the budget: all the reward model can say
    assert not v["met"] and v["gold_state"] is None
    assert v["verdict"] == ("quality bar NOT met: no gold metric: without one (or another held-out judge) "
                            "an improvement cannot be shown")


def test_below_thirty_prompts_nothing_is_judged_and_the_numbers_are_still_shown():
    few = judge(gold_difference=gold(0.02, 0.01, 0.03, prompts=29))
    assert not few["met"] and few["gold_state"] == "too few prompts"
    assert few["verdict"] == ("too few prompts to judge (29 < 30): gold vs sft +0.020, 95% CI +0.010 to +0.030 "
                              "over 29 prompts; quality bar NOT met")
    assert "gold up" not in few["verdict"]
    assert judge(gold_difference=gold(0.02, 0.01, 0.03, prompts=30))["met"]  # the same numbers on 30 prompts
    # a falling gold is not called over-optimisation on 29 prompts either
    assert judge(gold_difference=gold(-0.05, -0.08, -0.02, prompts=29))["gold_state"] == "too few prompts"


def test_one_prompt_whose_gold_rose_is_too_few_and_claims_no_interval():
    cand = ModelAnswers("ppo", ["a", "b"], rm_scores=[2.0, 2.0], gold_scores=[0.5, 0.7])
    base = ModelAnswers("sft", ["c", "d"], rm_scores=[1.0, 1.0], gold_scores=[0.1, 0.1])
    bar = compare_models(cand, base, ["p", "p"], kl_budget=10.0, kl_logprobs=([[-1.0]] * 2, [[-1.5]] * 2))["quality_bar"]
    assert not bar["met"] and bar["gold_state"] == "too few prompts"
    assert bar["verdict"].startswith("too few prompts to judge (1 < 30): gold vs sft +0.500, no interval from one "
                                     "prompt over 1 prompts")


def test_one_evaluator_judges_hand_made_answers_and_counts_prompts():
    # Three prompts, each answered twice; the candidate wins both answers of the first two prompts by
    # the RM and loses the third's twice; gold rises by 0.2 on the first prompt only.
    prompts = ["p1", "p1", "p2", "p2", "p3", "p3"]
    cand = ModelAnswers("ppo", ["a"] * 6, rm_scores=[2, 2, 2, 2, 0, 0], gold_scores=[0.5, 0.5, 0.3, 0.3, 0.1, 0.1])
    base = ModelAnswers("sft", ["b"] * 6, rm_scores=[1, 1, 1, 1, 1, 1], gold_scores=[0.3, 0.3, 0.3, 0.3, 0.1, 0.1])
    c = compare_models(cand, base, prompts, kl_budget=10.0, kl_logprobs=([[-1.0]] * 6, [[-2.0]] * 6))
    assert (c["answers"], c["prompts"]) == (6, 3)
    assert c["win_rate_rm"]["win_rate"] == pytest.approx(2 / 3) and c["win_rate_rm"]["prompts"] == 3
    d = c["gold_difference"]
    sd = math.sqrt(((0.2 - 0.2 / 3) ** 2 + 2 * (0.2 / 3) ** 2) / 2)  # per-prompt differences 0.2, 0, 0
    t2 = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))  # t(0.975) with 2 degrees of freedom, in closed form: 4.303
    assert d["mean"] == pytest.approx(0.2 / 3)
    assert d["ci_low"] == pytest.approx(0.2 / 3 - t2 * sd / math.sqrt(3))
    assert c["kl"]["k1_mean"] == pytest.approx(1.0)
    bar = c["quality_bar"]
    assert bar["gold_state"] == "too few prompts" and not bar["met"]
    assert "too few prompts to judge (3 < 30)" in bar["verdict"] and "over 3 prompts" in bar["verdict"]


def test_the_rm_gold_rank_correlation_pools_both_models_answers():
    # Pooled over both models: first the RM orders the four answers exactly as gold does (1.0); then the
    # baseline's answers are better by gold than the RM says, and only the cross-model pairs disagree.
    cand = ModelAnswers("ppo", ["a", "b"], rm_scores=[3.0, 1.0], gold_scores=[0.9, 0.2])
    base = ModelAnswers("sft", ["c", "d"], rm_scores=[2.0, 0.0], gold_scores=[0.5, 0.0])
    assert compare_models(cand, base, ["p1", "p2"], kl_budget=10.0)["rm_gold_spearman"] == pytest.approx(1.0)
    base = ModelAnswers("sft", ["c", "d"], rm_scores=[2.0, 0.0], gold_scores=[0.95, 0.3])
    assert compare_models(cand, base, ["p1", "p2"], kl_budget=10.0)["rm_gold_spearman"] == pytest.approx(0.6)
    assert "rm_gold_spearman" not in compare_models(ModelAnswers("ppo", ["a"], rm_scores=[1.0]),
                                                    ModelAnswers("sft", ["b"], rm_scores=[0.0]), ["p"], kl_budget=1.0)


def test_a_comparison_with_no_answers_is_judged_not_met_instead_of_crashing():
    v = quality_verdict(win_rate=None, rm_candidate=None, rm_baseline=None, kl=None, kl_budget=10.0)
    assert v["met"] is False and "NOT met" in v["verdict"]
