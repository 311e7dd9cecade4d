"""The gold metric (ROUGE-L F1 on words): 1 for the documented answer, near 0 for an unrelated one,
partial credit in between, and blind to case, punctuation and backticks."""

import pytest

from data.gold import gold_score, mean_gold_score

GOLD = "Return the number of items in a container."


def test_identical_answer_scores_one_and_formatting_does_not_matter():
    assert gold_score(GOLD, GOLD) == 1.0
    assert gold_score("return THE number of items in a `container`", GOLD) == 1.0


def test_unrelated_answer_scores_zero():
    assert gold_score("Open a file and get a stream.", GOLD) == 0.0
    assert gold_score("Open a file and return a stream.", GOLD) <= 0.25  # one shared word: "return"
    assert gold_score("Banana split with sprinkles", GOLD) == 0.0
    assert gold_score("", GOLD) == 0.0


def test_partial_answers_score_in_between_and_order_matters():
    truncated = gold_score("Return the number of items...", GOLD)
    assert 0.5 < truncated < 1.0
    shuffled = gold_score("container a in items of number the Return", GOLD)
    assert shuffled < truncated
    rambling = gold_score(GOLD + " It also makes coffee and walks the dog every morning.", GOLD)
    assert 0.4 < rambling < 1.0  # padding an answer lowers precision


def test_score_is_symmetric_deterministic_and_bounded():
    a, b = "Return a sorted list of the items.", GOLD
    assert gold_score(a, b) == gold_score(b, a) == gold_score(a, b)
    assert 0.0 <= gold_score(a, b) <= 1.0
    assert mean_gold_score([GOLD, "nothing alike"], [GOLD, GOLD]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_gold_score([GOLD], [])
