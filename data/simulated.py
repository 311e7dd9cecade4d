"""The simulated labeler (rank.labeler=gold, and the simulated person who ranks the server's answers in
`python -m apps.serve.feedback_sim`): a person who knows the documentation, and is not perfect.

It scores each answer with the gold metric against the documented answer and orders them by a
Plackett-Luce draw at temperature `noise`: the best place goes to answer i with probability
softmax(score / noise)_i, the next place likewise among the rest, and so on. At noise 0 the order
is the gold order; as noise grows it approaches a uniformly random order. Answers with the same
gold score are tied (one group): the metric cannot tell them apart, so neither does the labeler.
Seeded by (seed, prompt id): the same prompt gets the same draw whatever else is ranked.
"""

from __future__ import annotations

import math
import random

from data.gold import gold_score
from pipeline.judge.stats import kendall_tau


def tiers_by_score(scores: list[float]) -> list[list[int]]:
    """Indices grouped by equal score, best group first: [0.2, 0.9, 0.2] -> [[1], [0, 2]]."""
    levels = sorted(set(scores), reverse=True)
    return [[i for i, s in enumerate(scores) if s == level] for level in levels]


def plackett_luce(scores: list[float], noise: float, rng: random.Random) -> list[list[int]]:
    """A noisy order of the tiers of equal score (best first); noise 0 = exactly by score."""
    tiers = tiers_by_score(scores)
    if noise <= 0:
        return tiers
    left = list(range(len(tiers)))
    order = []
    while left:
        top = max(scores[tiers[t][0]] for t in left)
        weights = [math.exp((scores[tiers[t][0]] - top) / noise) for t in left]  # shifted: no overflow
        pick = rng.choices(range(len(left)), weights=weights)[0]
        order.append(tiers[left.pop(pick)])
    return order


def positions(tiers: list[list[int]], n: int) -> list[float]:
    """Each answer's place (0 = best) in a ranking given as tiers."""
    out = [0.0] * n
    for place, tier in enumerate(tiers):
        for i in tier:
            out[i] = float(place)
    return out


def agreement(tiers: list[list[int]], scores: list[float]) -> float | None:
    """Kendall tau-b between a ranking and the scores it was drawn from (1 = the noiseless order)."""
    return kendall_tau([-p for p in positions(tiers, len(scores))], scores)


def gold_scores(record: dict) -> list[float]:
    return [round(gold_score(r, record["gold"]), 6) for r in record["responses"]]


def label_with_gold(record: dict, noise: float, seed: int) -> tuple[list[list[int]], list[float]]:
    """(ranking as tiers best first, the gold scores) of one candidates record."""
    scores = gold_scores(record)
    return plackett_luce(scores, noise, random.Random(f"{seed}:{record['prompt_id']}")), scores
