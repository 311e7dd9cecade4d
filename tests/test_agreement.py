"""Pairwise agreement between two people's rankings of the same answers (data/labels.py), beside Kendall's tau:
the share of answer pairs both order the same way, a tie agreeing only with a tie. Every expected value
below is counted by hand over the K*(K-1)/2 answer pairs."""

import pytest

from data.labels import agreement, pair_agreement


@pytest.mark.parametrize("a,b,expected", [
    ([[0], [1], [2]], [[0], [1], [2]], 1.0),            # the same order: 3 of 3
    ([[0], [1], [2]], [[2], [1], [0]], 0.0),            # reversed: 0 of 3
    ([[0], [1], [2], [3]], [[1], [0], [2], [3]], 5 / 6),  # one swap at the top: 5 of 6
    ([[0], [1], [2]], [[0, 1], [2]], 2 / 3),            # one ties 0=1, the other orders them: that pair disagrees
    ([[0, 1], [2]], [[1, 0], [2]], 1.0),                # both tie 0=1: agree (the order inside a group is no order)
    ([[0, 1, 2]], [[0, 1, 2]], 1.0),                    # both tie everything: tau is undefined, pairs agree
    ([[0, 1, 2]], [[0], [1], [2]], 0.0),                # all tied against a strict order: no pair agrees
    ([[2], [0, 1]], [[0], [1], [2]], 0.0),              # 2 first vs last (2 pairs), 0=1 vs 0>1 (1 pair)
])
def test_pair_agreement_counts_answer_pairs_ordered_the_same_way(a, b, expected):
    assert pair_agreement(a, b) == pytest.approx(expected)
    assert pair_agreement(b, a) == pytest.approx(expected)  # symmetric


def rec(prompt, labeler, ranking, responses=("a", "b", "c")):
    return {"prompt_id": prompt, "labeler": labeler, "responses": list(responses), "ranking": ranking}


def test_agreement_reports_pairwise_agreement_per_prompt_then_over_prompts_beside_tau():
    records = [rec("p1", "ada", [0, 1, 2]), rec("p1", "bob", [0, 1, 2]), rec("p1", "cy", [2, 1, 0]),
               rec("p2", "ada", [[0, 1, 2]]), rec("p2", "bob", [0, 1, 2]),  # tau undefined, pairs 0 of 3
               rec("p3", "ada", [0, 1, 2])]                                 # one person: nothing to compare
    result = agreement(records)
    # p1: ada~bob 1, ada~cy 0, bob~cy 0 -> 1/3; p2: ada~bob 0 -> over prompts (1/3 + 0) / 2
    assert result["pair_prompts"] == 2 and result["pair_agreement"] == pytest.approx(1 / 6)
    assert result["prompts"] == 1 and result["mean_tau"] == pytest.approx(-1 / 3)  # tau only where defined: p1
    assert result["by_pair"]["ada~bob"] == {"prompts": 1, "mean_tau": 1.0, "pair_agreement": 0.5}
    assert result["by_pair"]["ada~cy"]["pair_agreement"] == 0.0


def test_both_reports_give_pairwise_agreement_beside_tau(tmp_path):
    from data.feedback import FeedbackStore, feedback_data, ranking_record
    from stages.rank.report import write_report
    from stages.reward.report import feedback_md

    people = agreement([rec("p1", "ada", [0, 1, 2]), rec("p1", "bob", [1, 0, 2])])  # 2 of 3 pairs
    summary = {"run": "t", "round": 1, "policy": "sft", "k": 3, "temperatures": [1.0], "prompts": 1, "skipped": 0,
               "answers_per_prompt": 3.0, "ranked": 1, "all_tied": 0, "labeler": "human", "people": ["ada", "bob"],
               "agreement": {"kendall_tau": None, "people": people}, "sampling_s": 0, "wall_time_s": 0}
    write_report(tmp_path, summary)
    assert "mean Kendall tau 0.333, pairwise agreement 0.667" in (tmp_path / "report.md").read_text()

    store = FeedbackStore(tmp_path)
    asked = [{"role": "user", "content": "What does len do?"}]
    answers = [{"text": t} for t in ("a", "b", "c")]
    store.append(ranking_record(asked, answers, [[0], [1], [2]], labeler="ada@serve"))
    store.append(ranking_record(asked, answers, [[0], [1, 2]], labeler="bob@serve"))  # 2 of 3 pairs
    lines = "\n".join(feedback_md(feedback_data(tmp_path).counts))
    assert "pairwise agreement 0.667" in lines
