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


def test_score_is_rouge_l_f1_on_content_words_worked_out_by_hand():
    # GOLD's content words: return number items container (the, of, in, a are function words)
    short = "Return the items."  # return items: both in GOLD's order, LCS 2; precision 2/2, recall 2/4
    assert gold_score(short, GOLD) == pytest.approx(2 * 1 * 0.5 / (1 + 0.5))  # F1 = 2/3
    assert gold_score(GOLD, short) == pytest.approx(2 / 3)  # precision and recall swap; F1 does not change
    # all three words are GOLD's, but only "items container" keeps its order: LCS 2, precision 2/3,
    # recall 2/4, F1 4/7 (counting shared words regardless of order would give 6/7)
    assert gold_score("items container return", GOLD) == pytest.approx(4 / 7)
    # an answer of function words only is compared on all its words: "the of" vs "of the", LCS 1 of 2
    assert gold_score("the of", "of the") == pytest.approx(0.5)
    assert mean_gold_score([GOLD, "nothing alike"], [GOLD, GOLD]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_gold_score([GOLD], [])
