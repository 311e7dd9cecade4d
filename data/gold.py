"""The gold metric: how close an answer is to the documented answer, independent of any model.

We use ROUGE-L F1 (longest common subsequence of word tokens, as a harmonic mean of precision and
recall) rather than bag-of-words token F1: a docstring summary is a short sentence whose meaning
lives largely in word order ("Return the lowest index in S where substring sub is found" vs. the
same words shuffled), and LCS rewards keeping that order while still giving partial credit for a
truncated or paraphrased answer. Tokens are lowercased words and numbers, with punctuation,
backticks and common English function words dropped, so formatting does not count. Pure Python,
deterministic, and used only for evaluation, never as a training signal: it is the check on
whether "the reward went up" also means "the answers got better".

On the common demo set, two different objects' gold answers score 0.04 on average, a gold answer
cut to half its words about 0.63, and the ranking candidates (best to worst) 1.0 / 0.36 / 0.20 / 0.03.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[a-z0-9_]+")
# English function words carry no fact about an object; counting them would give every pair of
# docstring sentences ("Return the ... of a ...") a floor of shared credit.
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but if is are be been it its this that these those "
    "as into than then there which who whom what when where how not no can may will".split()
)


def tokens(text: str) -> list[str]:
    """Lowercased content words; all words when the text has nothing but function words."""
    words = _TOKEN.findall(text.lower())
    content = [w for w in words if w not in STOPWORDS]
    return content or words


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def gold_score(answer: str, gold: str) -> float:
    """ROUGE-L F1 in [0, 1]: 1 for the same words in the same order, 0 for no word in common."""
    a, g = tokens(answer), tokens(gold)
    if not a or not g:
        return float(a == g)
    lcs = _lcs_length(a, g)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


def mean_gold_score(answers: list[str], golds: list[str]) -> float:
    if len(answers) != len(golds):
        raise ValueError(f"{len(answers)} answers for {len(golds)} gold answers")
    return sum(gold_score(a, g) for a, g in zip(answers, golds)) / max(1, len(answers))
