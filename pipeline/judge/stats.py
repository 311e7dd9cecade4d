"""Statistics for comparing models: win rates with ties and confidence intervals, KL estimates,
rank correlation. Plain Python on lists of numbers, so they are easy to test on hand-made data.

Intervals count prompts, not answers. When a prompt is answered several times (the PPO report samples
each prompt twice), its answers are not independent evidence: the same easy prompt wins twice. So
every interval here takes `clusters` (one key per answer, e.g. the prompt) and is computed on the
per-prompt means, with n = the number of prompts. That is the cluster-level analysis: for clusters of
equal size (every prompt answered k times) it is exactly the cluster-robust interval, and answering
every prompt twice with identical answers gives the very interval of answering it once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and (population) standard deviation; (None, None) for an empty list."""
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def cluster_means(values: Sequence[float], clusters: Sequence | None) -> list[float]:
    """The mean of the values of each cluster, in order of first appearance; without clusters every
    value is its own cluster."""
    if clusters is None:
        return list(values)
    if len(clusters) != len(values):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster keys")
    sums: dict = {}
    for key, v in zip(clusters, values):
        total, count = sums.get(key, (0.0, 0))
        sums[key] = (total + v, count + 1)
    return [total / count for total, count in sums.values()]


def paired_difference(candidate: Sequence[float], baseline: Sequence[float], z: float = 1.96,
                      clusters: Sequence | None = None) -> dict:
    """Mean of candidate - baseline over paired items, with a normal-approximation interval.

    Pairing (the same prompt answered by both models) removes the prompt-to-prompt spread, which
    is most of the variance of a per-answer metric. With `clusters` (the prompt of each pair) the
    differences are first averaged per prompt and the interval counts prompts: n is the number of
    pairs, `prompts` the number of independent units the interval rests on."""
    if len(candidate) != len(baseline):
        raise ValueError(f"paired_difference: {len(candidate)} candidate vs {len(baseline)} baseline values")
    diffs = cluster_means([a - b for a, b in zip(candidate, baseline)], clusters)
    if not diffs:
        return {"n": 0, "prompts": 0, "mean": None, "ci_low": None, "ci_high": None}
    m, sd = mean_std(diffs)
    half = z * sd * math.sqrt(len(diffs) / max(len(diffs) - 1, 1)) / math.sqrt(len(diffs))
    return {"n": len(candidate), "prompts": len(diffs), "mean": m, "ci_low": m - half, "ci_high": m + half}


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion successes/n (95% for z=1.96).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at p=0 or 1 and
    for small n, which is where eval sets of a few dozen prompts live.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def outcome(candidate: float, baseline: float, tie_tol: float = 1e-6) -> float:
    """1 for a win, 0 for a loss, 0.5 for a tie (|candidate - baseline| <= tie_tol)."""
    return 0.5 if abs(candidate - baseline) <= tie_tol else float(candidate > baseline)


def win_rate(candidate: Sequence[float], baseline: Sequence[float], tie_tol: float = 1e-6,
             clusters: Sequence | None = None) -> dict:
    """How often `candidate` beats `baseline`, prompt by prompt.

    A tie (|a - b| <= tie_tol) counts half a win, so 0.5 means "no better, no worse". The 95%
    interval is Wilson's on that half-counted proportion; ties make it slightly conservative.
    With `clusters` (the prompt of each pair) each prompt's pairs are averaged first (a prompt won
    once and lost once counts as a tie) and Wilson's interval counts prompts, not pairs.
    """
    if len(candidate) != len(baseline):
        raise ValueError(f"win_rate: {len(candidate)} candidate scores vs {len(baseline)} baseline scores")
    return win_rate_of_outcomes([outcome(a, b, tie_tol) for a, b in zip(candidate, baseline)], clusters)


def win_rate_of_outcomes(outcomes: Sequence[float], clusters: Sequence | None = None) -> dict:
    """win_rate from outcomes already scored: 1 win, 0.5 tie, 0 loss, or any value in between (the
    expected outcome of a blind pick). wins, ties and losses count the outcomes of exactly 1, 0.5 and 0,
    so with values in between they need not add up to n."""
    per_prompt = cluster_means(outcomes, clusters)
    counts = {"n": len(outcomes), "prompts": len(per_prompt), "wins": sum(o == 1.0 for o in outcomes),
              "losses": sum(o == 0.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes)}
    if not outcomes:
        return {**counts, "win_rate": None, "ci_low": None, "ci_high": None}
    score = sum(per_prompt)
    lo, hi = wilson_interval(score, len(per_prompt))
    return {**counts, "win_rate": score / len(per_prompt), "ci_low": lo, "ci_high": hi}


def length_matched(candidate_len: Sequence[int], baseline_len: Sequence[int], tolerance: float = 0.2) -> list[int]:
    """Indices of pairs whose lengths differ by at most `tolerance` of the longer one.

    Reward models tend to prefer longer answers; a win rate restricted to these pairs shows how
    much of a win survives when length cannot explain it.
    """
    keep = []
    for i, (a, b) in enumerate(zip(candidate_len, baseline_len)):
        if abs(a - b) <= tolerance * max(a, b, 1):
            keep.append(i)
    return keep


def kl_estimates(policy_logprobs: Sequence[Sequence[float]], ref_logprobs: Sequence[Sequence[float]]) -> dict:
    """KL(policy || reference) per answer, from answers sampled from the policy.

    With r_t = log q(y_t) - log p(y_t) for each sampled token (p policy, q reference):
      k1 = sum_t -r_t                       unbiased, can be negative for one answer;
      k3 = sum_t (exp(r_t) - 1 - r_t)       unbiased, never negative, lower variance.
    (Schulman, "Approximating KL divergence", 2020.) Both are sums over an answer's tokens, so
    they estimate the sequence-level KL that PPO's per-token penalty adds up.
    """
    if len(policy_logprobs) != len(ref_logprobs):
        raise ValueError("kl_estimates: policy and reference have a different number of answers")
    k1s, k3s, lengths = [], [], []
    for lp, lq in zip(policy_logprobs, ref_logprobs):
        if len(lp) != len(lq):
            raise ValueError("kl_estimates: an answer has a different number of tokens under the two models")
        k1 = k3 = 0.0
        for p, q in zip(lp, lq):
            r = q - p
            k1 -= r
            k3 += math.expm1(r) - r
        k1s.append(k1)
        k3s.append(k3)
        lengths.append(len(lp))
    k1_mean, k1_std = mean_std(k1s)
    k3_mean, _ = mean_std(k3s)
    tokens = sum(lengths)
    return {
        "n": len(k1s), "k1_mean": k1_mean, "k1_std": k1_std, "k3_mean": k3_mean,
        "k1_per_token": (sum(k1s) / tokens) if tokens else None,
        "per_answer_k1": k1s,
    }


def ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson on average ranks); None when undefined."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    return pearson(ranks(xs), ranks(ys))


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau-b between two score lists (ties in either count as neither agreement nor
    disagreement); None when either list is constant."""
    conc = disc = tx = ty = 0
    n = len(xs)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / denom if denom else None
