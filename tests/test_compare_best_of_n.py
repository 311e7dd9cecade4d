"""Best of n in `make compare` (stages/compare/best_of_n.py): which answer it keeps and the KL it reports
(the run through `make compare` is in test_compare.py)."""

import math

import pytest

from stages.compare.best_of_n import analytic_kl, choose


def test_each_prompt_keeps_its_highest_scoring_answer_of_the_n_rounds():
    # 3 prompts answered in 2 rounds: answer j of prompt i sits at j * 3 + i
    scores = [0.1, 0.9, -1.0,
              0.5, 0.2, -2.0]
    assert choose(scores, 2) == [3, 1, 2]
    assert choose([0.3, 0.3], 2) == [0]  # equal scores: the first
    assert choose([1.0, 2.0, 3.0], 1) == [0, 1, 2]  # best of one is the sample itself


def test_the_kl_of_best_of_n_is_log_n_minus_n_minus_one_over_n():
    assert analytic_kl(1) == 0.0
    assert analytic_kl(4) == pytest.approx(math.log(4) - 0.75)
    assert analytic_kl(16) == pytest.approx(2.7726 - 0.9375, abs=1e-4)
    assert all(analytic_kl(n) < analytic_kl(n + 1) for n in range(1, 64))  # more choice, further from SFT
