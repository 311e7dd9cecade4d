"""The numbers behind the evaluation report, checked on hand-made data with known answers."""

import math

import pytest
import torch

from pipeline.judge.stats import (
    kl_estimates,
    length_matched,
    mean_std,
    paired_difference,
    spearman,
    t_quantile,
    wilson_interval,
    win_rate,
)
from pipeline.lm.generation import pick_tokens, shape_logits


def test_win_rate_counts_ties_as_half_a_win():
    candidate = [3, 2, 1, 5, 5]
    baseline = [1, 2, 3, 4, 0]  # win, tie, loss, win, win
    w = win_rate(candidate, baseline)
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (3, 1, 1, 5)
    assert w["win_rate"] == pytest.approx(3.5 / 5)
    assert w["ci_low"] < w["win_rate"] < w["ci_high"]


def test_win_rate_of_identical_answers_is_one_half_with_a_symmetric_interval():
    w = win_rate([0.2] * 10, [0.2] * 10)
    assert w["ties"] == 10 and w["win_rate"] == 0.5
    assert w["ci_low"] == pytest.approx(1 - w["ci_high"])


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = wilson_interval(8, 10)  # 8 of 10: the usual worked example
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = wilson_interval(10, 10)  # stays inside [0, 1] where the normal approximation does not
    assert hi == 1.0 and round(lo, 3) == 0.722
    lo, hi = wilson_interval(50, 100)
    assert (round(lo, 3), round(hi, 3)) == (0.404, 0.596)


def test_wilson_interval_holds_its_proportion_to_the_last_bit():
    # Rounding once gave 6 of 6 an upper end of 0.9999999999999999 and 0 of 11 a lower end of 3e-17: the win-rate
    # plot's error bars (rate - low, high - rate) came out negative and matplotlib stopped eval.
    for n in range(1, 200):
        for halves in range(2 * n + 1):  # ties count half
            lo, hi = wilson_interval(halves / 2, n)
            assert 0.0 <= lo <= halves / 2 / n <= hi <= 1.0, (halves / 2, n)


def test_win_rate_refuses_mismatched_lists_and_reports_empty_sets_as_unknown():
    with pytest.raises(ValueError):
        win_rate([1, 2], [1])
    assert win_rate([], [])["win_rate"] is None


def test_length_matching_keeps_pairs_within_the_tolerance():
    assert length_matched([10, 10, 10, 0], [11, 14, 8, 0], tolerance=0.2) == [0, 2, 3]


def test_kl_estimates_on_hand_made_log_probabilities():
    policy = [[-1.0, -2.0], [-0.5]]
    ref = [[-1.5, -2.5], [-0.5]]
    kl = kl_estimates(policy, ref)
    assert kl["per_answer_k1"] == pytest.approx([1.0, 0.0])
    assert kl["k1_mean"] == pytest.approx(0.5)
    assert kl["k3_mean"] == pytest.approx((2 * (math.exp(-0.5) - 1 + 0.5)) / 2)
    assert kl["k1_per_token"] == pytest.approx(1.0 / 3)
    assert kl_estimates(policy, policy)["k1_mean"] == 0.0


def test_kl_estimates_converge_to_the_exact_kl_on_samples_from_the_policy():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    exact = float((p * (p / q).log()).sum())
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(p, 20000, replacement=True, generator=gen)
    kl = kl_estimates([[float(p[d].log())] for d in draws], [[float(q[d].log())] for d in draws])
    assert kl["k1_mean"] == pytest.approx(exact, abs=0.02)
    assert kl["k3_mean"] == pytest.approx(exact, abs=0.02)


def test_spearman_uses_average_ranks_for_ties():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 1], [1, 2]) is None


def test_paired_difference_gives_the_mean_difference_with_a_student_t_interval():
    d = paired_difference([3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 3.0, 2.0])  # differences 2, 3, 1, 4
    sd = math.sqrt(sum((x - 2.5) ** 2 for x in (2, 3, 1, 4)) / 3)  # sample standard deviation
    t3 = 3.182446  # t(0.975, 3 degrees of freedom), from the table: 1.96 would claim a third less width
    assert d["n"] == 4 and d["mean"] == pytest.approx(2.5)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((2.5 - t3 * sd / 2, 2.5 + t3 * sd / 2), rel=1e-6)
    assert paired_difference([], [])["mean"] is None
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_one_prompt_gives_a_mean_and_no_interval():
    # one number has no spread: the old z interval was zero-width there, claiming certainty
    one = paired_difference([0.7, 0.5], [0.2, 0.2], clusters=["p", "p"])
    assert (one["n"], one["prompts"], one["mean"]) == (2, 1, pytest.approx(0.4))
    assert one["ci_low"] is None and one["ci_high"] is None


@pytest.mark.parametrize("p, df, table", [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 5, 2.571), (0.975, 10, 2.228), (0.975, 30, 2.042),
    (0.975, 100, 1.984), (0.975, 1000, 1.962), (0.975, 10 ** 6, 1.960), (0.995, 10, 3.169), (0.95, 20, 1.725),
    (0.6, 3, 0.277), (0.025, 5, -2.571),
])
def test_t_quantile_matches_the_printed_table(p, df, table):
    assert round(t_quantile(p, df), 3) == table


def test_t_quantile_in_closed_form_and_across_the_switch_to_the_expansion(monkeypatch):
    from pipeline.judge import stats

    # df = 1 (Cauchy) and df = 2 have closed-form quantiles
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)
    assert t_quantile(0.975, 2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95 ** 2)), rel=1e-12)
    # the expansion used for large df agrees with the exact computation where they meet
    expanded = [t_quantile(0.975, df) for df in (201, 400)]
    monkeypatch.setattr(stats, "_EXACT_T_UP_TO", 10 ** 6)
    assert [t_quantile(0.975, df) for df in (201, 400)] == pytest.approx(expanded, rel=1e-9)
    monkeypatch.undo()
    factors = [t_quantile(0.975, df) for df in range(1, 401)]
    assert all(a > b for a, b in zip(factors, factors[1:]))  # more prompts, narrower interval, never a jump
    for bad in ((1.0, 5), (0.975, 0), (0.975, 2.5)):
        with pytest.raises(ValueError):
            t_quantile(*bad)


def test_mean_std():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([]) == (None, None)


LOGITS = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()


def test_temperature_sharpens_or_flattens_the_softmax():
    sharp = shape_logits(LOGITS, 0.5).softmax(-1)
    expected = torch.tensor([0.5, 0.3, 0.15, 0.05]) ** 2
    assert torch.allclose(sharp, expected / expected.sum())
    flat = shape_logits(LOGITS, 2.0).softmax(-1)
    assert flat[0] < 0.5 < sharp[0]


def test_top_k_and_top_p_remove_the_tail():
    assert torch.isinf(shape_logits(LOGITS, 1.0, top_k=2)).tolist() == [False, False, True, True]
    assert torch.isinf(shape_logits(LOGITS, 1.0, top_p=0.8)).tolist() == [False, False, True, True]
    assert torch.isinf(shape_logits(LOGITS, 1.0, top_p=0.81)).tolist() == [False, False, False, True]
    assert torch.isinf(shape_logits(LOGITS, 1.0, top_p=0.1)).tolist() == [False, True, True, True]


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]])
    assert pick_tokens(logits, 0.0).tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    assert pick_tokens(logits, 1.0, top_k=1, generator=gen).tolist() == [1, 0]


def test_answering_every_prompt_twice_identically_gives_the_interval_of_answering_once():
    cand, base = [3, 2, 1, 5, 5, 0, 2, 4], [1, 2, 3, 4, 0, 1, 2, 1]
    once_w, once_d = win_rate(cand, base), paired_difference(cand, base)
    prompts = [f"p{i}" for i in range(8)] * 2
    twice_w = win_rate(cand * 2, base * 2, clusters=prompts)
    twice_d = paired_difference(cand * 2, base * 2, clusters=prompts)
    assert (twice_w["ci_low"], twice_w["ci_high"], twice_w["win_rate"]) == pytest.approx(
        (once_w["ci_low"], once_w["ci_high"], once_w["win_rate"]))
    assert (twice_d["ci_low"], twice_d["ci_high"], twice_d["mean"]) == pytest.approx(
        (once_d["ci_low"], once_d["ci_high"], once_d["mean"]))
    assert (twice_w["n"], twice_w["prompts"], twice_d["n"], twice_d["prompts"]) == (16, 8, 16, 8)
    # Counting the 16 answers as independent would have made both intervals narrower than the data allows.
    naive_w, naive_d = win_rate(cand * 2, base * 2), paired_difference(cand * 2, base * 2)
    assert naive_w["ci_high"] - naive_w["ci_low"] < twice_w["ci_high"] - twice_w["ci_low"]
    assert naive_d["ci_high"] - naive_d["ci_low"] < twice_d["ci_high"] - twice_d["ci_low"]


def test_clustered_win_rate_is_wilson_over_prompts_with_a_split_prompt_counting_half():
    # 10 prompts answered twice: 8 won both times, 2 lost both times -> Wilson's 8 of 10.
    prompts = [i // 2 for i in range(20)]
    w = win_rate([1] * 16 + [0] * 4, [0] * 16 + [1] * 4, clusters=prompts)
    assert (round(w["ci_low"], 3), round(w["ci_high"], 3)) == (0.490, 0.943)
    assert (w["wins"], w["losses"], w["ties"], w["n"], w["prompts"]) == (16, 4, 0, 20, 10)
    # Won once and lost once: the prompt counts as a tie (half a win), in any order of the answers.
    w = win_rate([1, 0, 1, 1], [0, 1, 0, 0], clusters=["a", "a", "b", "b"])
    assert w["win_rate"] == pytest.approx(0.75) and w["prompts"] == 2
    assert w == win_rate([1, 1, 0, 1], [0, 0, 1, 0], clusters=["a", "b", "a", "b"])
    with pytest.raises(ValueError):
        win_rate([1, 2], [0, 1], clusters=["a"])
