"""Statistics for comparing models: win rates with ties and confidence intervals, KL estimates,
rank correlation. Plain Python on lists of numbers, so they are easy to test on hand-made data.

Intervals count prompts, not answers. When a prompt is answered several times (the PPO report samples
each prompt twice), its answers are not independent evidence: the same easy prompt wins twice. So
every interval here takes `clusters` (one key per answer, e.g. the prompt) and is computed on the
per-prompt means, with n = the number of prompts. That is the cluster-level analysis: for clusters of
equal size (every prompt answered k times) it is exactly the cluster-robust interval, and answering
every prompt twice with identical answers gives the very interval of answering it once.

A mean's interval uses Student's t with prompts - 1 degrees of freedom, not the normal's 1.96: the
standard deviation is itself measured on those prompts, and on a few of them it is often too small
(t = 2.57 for 6 prompts, 2.04 for 31, 1.97 for 300). One prompt measures no spread: no interval.
Proportions (win rates) use Wilson's interval, which stays sensible for small n and at 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist


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


def paired_difference(candidate: Sequence[float], baseline: Sequence[float],
                      clusters: Sequence | None = None) -> dict:
    """Mean of candidate - baseline over paired items, with a 95% Student t interval.

    Pairing (the same prompt answered by both models) removes the prompt-to-prompt spread, which
    is most of the variance of a per-answer metric. With `clusters` (the prompt of each pair) the
    differences are first averaged per prompt and the interval counts prompts: n is the number of
    pairs, `prompts` the number of independent units the interval rests on (t with prompts - 1
    degrees of freedom). With one prompt the interval is None: one number has no spread to measure."""
    if len(candidate) != len(baseline):
        raise ValueError(f"paired_difference: {len(candidate)} candidate vs {len(baseline)} baseline values")
    diffs = cluster_means([a - b for a, b in zip(candidate, baseline)], clusters)
    out = {"n": len(candidate), "prompts": len(diffs), "mean": None, "ci_low": None, "ci_high": None}
    if not diffs:
        return out
    out["mean"] = m = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return out
    sample_sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1))
    half = t_quantile(0.975, len(diffs) - 1) * sample_sd / math.sqrt(len(diffs))
    out.update(ci_low=m - half, ci_high=m + half)
    return out


_EXACT_T_UP_TO = 200  # degrees of freedom computed exactly; above, the expansion's error is below 1e-9


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t distribution with `df` (a whole number >= 1) degrees of freedom:
    t_quantile(0.975, 5) = 2.5706, the factor of a 95% interval from 6 numbers.

    Up to 200 degrees of freedom it is exact: bisection on the distribution function, which has a
    closed form for whole df. Beyond, the Cornish-Fisher expansion around the normal quantile
    (Abramowitz & Stegun 26.7.5), whose first omitted term is below 1e-9 there."""
    if not 0 < p < 1 or df < 1 or df != int(df):
        raise ValueError(f"t_quantile: needs 0 < p < 1 and a whole df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if df > _EXACT_T_UP_TO:
        z = NormalDist().inv_cdf(p)
        terms = ((z ** 3 + z) / 4,
                 (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
                 (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
                 (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
        return z + sum(g / df ** (k + 1) for k, g in enumerate(terms))
    inside = 2 * p - 1  # P(|T| <= t) at the quantile
    low, high = 0.0, 1.0
    while _t_central_probability(high, int(df)) < inside:
        low, high = high, 2 * high
    for _ in range(200):  # halves the bracket each time: far below float resolution long before the end
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if _t_central_probability(mid, int(df)) < inside else (low, mid)
    return (low + high) / 2


def _t_central_probability(t: float, df: int) -> float:
    """P(|T| <= t) for t >= 0 and whole df, in closed form (Abramowitz & Stegun 26.7.3 and 26.7.4):
    with theta = atan(t / sqrt(df)) and c = cos(theta), a finite series in c^2."""
    theta = math.atan(t / math.sqrt(df))
    sin, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2))
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return sin * total
    if df == 1:
        return 2 * theta / math.pi
    # odd df: 2/pi * (theta + sin(theta) * (c + 2/3 c^3 + 2*4/(3*5) c^5 + ... up to c^(df-2)))
    term = total = math.cos(theta)
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + sin * total)


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
    # The interval holds p exactly; in floats its ends can miss p by an ulp at p = 0 or 1 (e.g. 6 of 6 gave an
    # upper end of 0.9999999999999999), which put negative error bars into eval's plot and crashed it.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


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
