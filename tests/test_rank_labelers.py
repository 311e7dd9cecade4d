"""The rank stage's labelers: the simulated person (Plackett-Luce on gold scores), people's labels read
back from the labeling page's files, and the rankings.jsonl records the reward stage must read."""

import json
import math
import random
from collections import Counter
from itertools import permutations

import pytest

from data.loaders import load_pairs, load_rankings
from data.simulated import agreement, label_with_gold, plackett_luce, tiers_by_score
from stages.rank.people import human_rankings
from stages.rank.stage import label_gold, ranking_record
from stages.reward.heldout import heldout_from_rankings

SCORES = [0.2, 0.9, 0.0, 0.5]  # hand-made gold scores: gold order 1 > 3 > 0 > 2


def test_noise_zero_gives_the_gold_order_and_ties_equal_scores():
    rng = random.Random(0)
    assert plackett_luce(SCORES, 0.0, rng) == [[1], [3], [0], [2]]
    assert tiers_by_score([0.3, 0.7, 0.3, 0.0]) == [[1], [0, 2], [3]]
    assert plackett_luce([0.3, 0.7, 0.3, 0.0], 0.0, rng) == [[1], [0, 2], [3]]


def test_first_place_follows_the_softmax_of_gold_over_noise():
    noise, n = 0.3, 4000
    rng = random.Random(1)
    firsts = Counter(plackett_luce(SCORES, noise, rng)[0][0] for _ in range(n))
    z = sum(math.exp(s / noise) for s in SCORES)
    for i, s in enumerate(SCORES):
        p = math.exp(s / noise) / z
        se = math.sqrt(p * (1 - p) / n)
        assert abs(firsts[i] / n - p) < 4 * se, (i, firsts[i] / n, p)


def test_high_noise_gives_near_uniform_orders():
    """Chi-square over all 24 orders of 4 answers: at noise 100 the orders must look uniform (fixed
    seed; the 0.1% critical value with 23 degrees of freedom is 49.7), at noise 0.3 they must not."""
    def chi_square(noise):
        rng = random.Random(2)
        n = 4800
        counts = Counter(tuple(t[0] for t in plackett_luce(SCORES, noise, rng)) for _ in range(n))
        expected = n / 24
        return sum((counts.get(p, 0) - expected) ** 2 / expected for p in permutations(range(4)))

    assert chi_square(100.0) < 49.7
    assert chi_square(0.3) > 500


def test_agreement_with_the_gold_order_falls_with_noise():
    recs = [{"prompt_id": f"p{i}", "responses": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"]} for i in range(300)]
    mean_tau = {}
    for noise in (0.0, 0.1, 1.0, 100.0):
        taus = [agreement(plackett_luce(SCORES, noise, random.Random(f"7:{r['prompt_id']}")), SCORES) for r in recs]
        mean_tau[noise] = sum(taus) / len(taus)
    assert mean_tau[0.0] == 1.0
    assert mean_tau[0.0] > mean_tau[0.1] > mean_tau[1.0] > 0.1
    assert abs(mean_tau[100.0]) < 0.1


def test_the_gold_labeler_is_deterministic_per_prompt_and_counts_all_tied_prompts():
    gold = "Return the number of items in a container."
    recs = [{"prompt_id": "p1", "prompt": "q", "gold": gold,
             "responses": ["Return the number of items.", "A web server.", "Return the items in a container."]},
            {"prompt_id": "p2", "prompt": "q", "gold": gold, "responses": ["Spam.", "Eggs."]}]  # both score 0
    assert label_with_gold(recs[0], 0.5, 3) == label_with_gold(recs[0], 0.5, 3)
    rankings, ag = label_gold(recs, 0.0, 3)
    assert [r["prompt_id"] for r in rankings] == ["p1"] and ag["all_tied"] == 1
    assert rankings[0]["groups"][-1] == [1] and ag["kendall_tau"] == 1.0 and ag["pair_agreement"] == 1.0


def test_rankings_round_trip_through_the_reward_loader_with_ties(tmp_path):
    x = {"prompt_id": "p1", "prompt": "What does len do?", "responses": ["bad", "best", "ok", "also ok"],
         "groups": [[1], [2, 3], [0]], "labeler": "gold", "labeler_kind": "gold"}
    strict = {**x, "prompt_id": "p2", "groups": [[2], [0], [1], [3]]}
    path = tmp_path / "rankings.jsonl"
    path.write_text("".join(json.dumps(ranking_record(r)) + "\n" for r in (x, strict)))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["ranking"] == [[1], [2, 3], [0]] and lines[1]["ranking"] == [2, 0, 1, 3]
    assert {"labeler", "labeler_kind", "time", "prompt_id"} <= set(lines[0])
    loaded = load_rankings(str(path))
    assert [r["groups"] for r in loaded] == [[[1], [2, 3], [0]], [[2], [0], [1], [3]]]
    pairs = load_pairs(str(path))
    tied = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs[:5]}
    assert len(pairs) == 5 + 6 and ("ok", "also ok") not in tied and ("also ok", "ok") not in tied
    h = heldout_from_rankings(loaded)
    assert len(h.pairs) == 11


def test_people_latest_label_wins_stale_ones_are_counted_and_agreement_is_measured(tmp_path):
    cands = [{"prompt_id": "p1", "prompt": "q1", "responses": ["a", "b", "c"]},
             {"prompt_id": "p2", "prompt": "q2", "responses": ["d", "e"]},
             {"prompt_id": "p3", "prompt": "q3", "responses": ["f", "g"]}]

    def line(pid, who, ranking, responses):
        return json.dumps({"prompt_id": pid, "prompt": "q", "responses": responses, "ranking": ranking,
                           "labeler": who, "labeler_kind": "human", "time": "t"}) + "\n"

    (tmp_path / "alice.jsonl").write_text(
        line("p1", "alice", [2, 1, 0], ["a", "b", "c"]) + line("p1", "alice", [0, 1, 2], ["a", "b", "c"])  # re-ranked
        + line("p2", "alice", [1, 0], ["d", "OLD"]) + '{"prompt_id": "p3", "skipped": true}\n' + '{"prompt_id": "p')
    (tmp_path / "bob.jsonl").write_text(line("p1", "bob", [[0], [1, 2]], ["a", "b", "c"]))
    rankings, counts = human_rankings(cands, tmp_path)
    by = {(r["prompt_id"], r["labeler"]): r["groups"] for r in rankings}
    assert by == {("p1", "alice"): [[0], [1], [2]], ("p1", "bob"): [[0], [1, 2]]}
    assert counts["stale_or_invalid"] == 1 and counts["unreadable_lines"] == 1
    assert counts["remaining"] == 2 and counts["people"] == ["alice", "bob"]
    assert counts["agreement_tau"]["prompts"] == 1
    assert counts["agreement_tau"]["mean_tau"] == pytest.approx(2 / 6 ** 0.5)  # tau-b of 0>1>2 vs 0>(1=2)
