"""The best-of-n yardstick of the reward stage: the gold win rate of the answer a reward model picks
among the policy's own answers, against a standing answer at the lowest temperature."""

import pytest

from pipeline.judge.stats import win_rate_of_outcomes
from stages.reward.best_of_n import best_of_n
from stages.reward.own_answers import _split, _temperatures

# one prompt, four answers: two at T 0.7 (the standing answers take turns), two hotter ones
GOLD = [0.5, 0.2, 0.8, 0.5]
TEMPS = [0.7, 1.0, 1.0, 0.7]


def test_known_answer_a_reward_model_that_prefers_the_worst_answer_loses_every_turn():
    out = best_of_n([[0.0, 3.0, 1.0, 2.0]], [GOLD], [TEMPS])
    # turn 0: pool {1, 2, 3}, the RM picks 1 (gold 0.2 < 0.5): a loss; gold picks 2 (0.8): a win;
    # blind: 0.2 loses, 0.8 wins, 0.5 ties -> 0.5. Turn 3 (pool {0, 1, 2}) is the same.
    assert out["prompts"] == 1 and out["answers_per_prompt"] == 4
    assert out["reward_model"]["win_rate"] == 0.0 and out["reward_model"]["losses"] == 2
    assert out["gold"]["win_rate"] == 1.0 and out["gold"]["wins"] == 2
    assert out["blind"]["win_rate"] == pytest.approx(0.5)
    assert out["gap_closed"] == pytest.approx((0.0 - 0.5) / (1.0 - 0.5))  # worse than choosing blindly


def test_the_standing_answers_are_those_at_the_lowest_temperature_wherever_they_sit():
    # rank.temperatures [1.0, 0.7]: the T 0.7 answers are the second and fourth
    out = best_of_n([[9.0, 0.0, 1.0, 2.0]], [[0.9, 0.1, 0.0, 0.2]], [[1.0, 0.7, 1.0, 0.7]])
    # turn 1 (gold 0.1): the RM picks answer 0 (0.9), a win; turn 3 (0.2): answer 0 again, a win
    assert out["reward_model"]["n"] == 2 and out["reward_model"]["win_rate"] == 1.0
    # with the first answer standing (the T 1.0 one at 0.9) nothing could beat it
    assert best_of_n([[9.0, 0.0, 1.0, 2.0]], [[0.9, 0.1, 0.0, 0.2]], [None])["gold"]["win_rate"] < 1.0


def test_a_reward_model_that_orders_answers_as_gold_does_reaches_the_gold_ceiling():
    golds = [[0.1, 0.4, 0.0, 0.3], [0.0, 0.0, 0.6], [0.9, 0.2, 0.5]]
    temps = [[0.7, 0.7, 1.1, 1.3], [0.7, 0.9, 1.1], [0.7, 0.9, 1.1]]
    rewards = [[10 * g - 1 for g in gs] for gs in golds]  # any increasing function of gold
    out = best_of_n(rewards, golds, temps)
    assert out["reward_model"] == out["gold"]
    assert out["prompts"] == 3 and out["gold"]["prompts"] == 3  # the interval counts prompts, not turns
    # prompt 0: turn 0 wins (0.4 beats 0.1), turn 1 loses (the best of {0.1, 0.0, 0.3} is below 0.4);
    # prompt 1: 0.6 beats 0.0; prompt 2: 0.5 loses to 0.9 -> (0.5 + 1 + 0) / 3
    assert out["gold"]["win_rate"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_without_temperatures_every_answer_takes_a_turn_and_single_answers_are_skipped():
    out = best_of_n([[1.0, 0.0], [5.0]], [[0.3, 0.6], [1.0]], [None, None])
    # turn 0: the RM's only choice is answer 1 (0.6 > 0.3): win; turn 1: answer 0 (0.3 < 0.6): loss
    assert out["prompts"] == 1 and out["answers_per_prompt"] == 2  # the one-answer prompt counts nowhere
    assert out["reward_model"]["win_rate"] == 0.5 and out["reward_model"]["n"] == 2
    assert best_of_n([[5.0]], [[1.0]], [None]) is None


def test_mismatched_lists_are_refused():
    with pytest.raises(ValueError, match="prompt 0: 3 rewards, 4 gold scores"):
        best_of_n([[0.0, 1.0, 2.0]], [GOLD], [TEMPS])


def test_fractional_outcomes_average_by_prompt_and_only_whole_ones_are_counted():
    w = win_rate_of_outcomes([1.0, 0.25, 0.5, 0.0], clusters=["a", "a", "b", "c"])
    assert w["win_rate"] == pytest.approx((0.625 + 0.5 + 0.0) / 3) and w["prompts"] == 3
    assert (w["wins"], w["ties"], w["losses"]) == (1, 1, 1)
    assert w["ci_low"] < w["win_rate"] < w["ci_high"]


def test_the_flat_scores_of_all_answers_are_cut_back_per_prompt_in_order():
    cands = [{"responses": ["a", "b"]}, {"responses": ["c"]}, {"responses": ["d", "e", "f"]}]
    assert _split(cands, [1, 2, 3, 4, 5, 6]) == [[1, 2], [3], [4, 5, 6]]
    with pytest.raises(ValueError, match="7 values for 6 answers"):
        _split(cands, [1, 2, 3, 4, 5, 6, 7])


def test_a_temperature_list_that_does_not_fit_the_answers_is_not_used():
    assert _temperatures({"responses": ["a", "b"], "temperatures": [0.7, 0.9]}) == [0.7, 0.9]
    assert _temperatures({"responses": ["a", "b"], "temperatures": [0.7]}) is None
    assert _temperatures({"responses": ["a", "b"]}) is None
