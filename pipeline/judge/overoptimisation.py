"""Reward over-optimisation as Gao et al. measured it ("Scaling Laws for Reward Model Overoptimization", 2023):
a score's gain over the starting policy as a function of d = sqrt(KL(policy || start)), the KL per answer in nats.

    RL:         R(d) = d (alpha - beta log d)     peak at d* = exp(alpha/beta - 1), R(d*) = beta d*
    best-of-n:  R(d) = d (alpha - beta d)         peak at d* = alpha / (2 beta),    R(d*) = alpha^2 / (4 beta)

Both are linear in (alpha, beta), so the fit is ordinary least squares on the features (d, -d log d) or
(d, -d^2); R is the gain over the start (the score at d = 0), so the forms pass through the origin. The gold
score of an over-optimised run rises, peaks and falls (beta > 0); a proxy (the reward model itself) usually keeps
rising, and a fit without a positive beta has no peak (None).

Also the curve of one run (`Curve`: a point per development evaluation, SFT's per-prompt scores for the win
rates, the best point and its weights, early stop) and the rule that keeps the best point (`better`): the higher
development score wins, a tie goes to the lower KL. PPO (stages/ppo) and GRPO/RLOO (stages/align) both use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.judge.stats import mean_std, win_rate

FORMS = ("rl", "bon")
TIE = 1e-9  # scores closer than this are a tie (the same answers scored twice)


@dataclass(frozen=True)
class Fit:
    form: str  # "rl" or "bon"
    alpha: float
    beta: float
    points: int  # points with d > 0 the fit used
    rmse: float  # of the gain, over those points

    def gain(self, d: float) -> float:
        if d <= 0:
            return 0.0
        return d * (self.alpha - self.beta * (math.log(d) if self.form == "rl" else d))

    def peak(self) -> tuple[float, float] | None:
        """(d*, gain at d*) where the fitted gain is highest; None when it never turns down (beta <= 0)."""
        if self.beta <= 0:
            return None
        if self.form == "rl":
            d = math.exp(self.alpha / self.beta - 1.0)
            return d, self.beta * d
        d = self.alpha / (2.0 * self.beta)
        return (d, self.alpha**2 / (4.0 * self.beta)) if d > 0 else None

    def as_dict(self) -> dict:
        peak = self.peak()
        return {"form": self.form, "alpha": self.alpha, "beta": self.beta, "points": self.points, "rmse": self.rmse,
                "peak_d": peak[0] if peak else None, "peak_kl": peak[0] ** 2 if peak else None,
                "peak_gain": peak[1] if peak else None}


def fit(d: Sequence[float], gain: Sequence[float], form: str = "rl") -> Fit | None:
    """Least-squares (alpha, beta) of `form` through the points (d_i, gain_i); points at d <= 0 carry no
    information (every form is 0 there) and are left out. None with fewer than two usable points or when
    the two features are collinear (all points at one d)."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; use one of {FORMS}")
    pts = [(float(x), float(y)) for x, y in zip(d, gain) if x > 0 and math.isfinite(x) and math.isfinite(y)]
    if len(pts) < 2:
        return None
    # gain = alpha * u - beta * v: normal equations of the 2x2 least-squares problem
    rows = [(x, x * math.log(x) if form == "rl" else x * x, y) for x, y in pts]
    suu = sum(u * u for u, _, _ in rows)
    svv = sum(v * v for _, v, _ in rows)
    suv = sum(u * v for u, v, _ in rows)
    suy = sum(u * y for u, _, y in rows)
    svy = sum(v * y for _, v, y in rows)
    det = suu * svv - suv * suv
    if abs(det) <= 1e-12 * max(suu * svv, 1e-300):
        return None
    alpha = (suy * svv - svy * suv) / det
    beta = -(suu * svy - suv * suy) / det
    result = Fit(form, alpha, beta, len(pts), 0.0)
    rmse = math.sqrt(sum((result.gain(x) - y) ** 2 for x, y in pts) / len(pts))
    return Fit(form, alpha, beta, len(pts), rmse)


def distance(kl: float) -> float:
    """d = sqrt(KL), with a KL estimate a hair below zero (sampling noise) read as 0."""
    return math.sqrt(max(kl, 0.0))


def curve_fits(points: Sequence[dict], *, kl: str = "kl_k1", scores: Sequence[str] = ("proxy", "gold")) -> dict:
    """Both forms fitted to each score's gain over the first point (the start, d = 0): {score: {form: fit dict}}
    for the scores every point has; a form that cannot be fitted is None."""
    if not points:
        return {}
    out = {}
    for name in scores:
        if any(p.get(name) is None for p in points):
            continue
        start = points[0][name]
        d = [distance(p[kl]) for p in points]
        gains = [p[name] - start for p in points]
        out[name] = {form: (f.as_dict() if (f := fit(d, gains, form)) else None) for form in FORMS}
    return out


def better(score: float, kl: float, best_score: float | None, best_kl: float | None) -> bool:
    """Does a point with (score, kl) beat the best so far? A higher score does; a tie goes to the lower KL
    (the point nearer the start is as good and risks less)."""
    if best_score is None:
        return True
    if score > best_score + TIE:
        return True
    return abs(score - best_score) <= TIE and kl < (best_kl if best_kl is not None else math.inf)


def _win(candidate: list, baseline: list) -> float | None:
    pairs = [(c, b) for c, b in zip(candidate, baseline) if c is not None and b is not None]
    return win_rate([c for c, _ in pairs], [b for _, b in pairs])["win_rate"] if pairs else None


class Curve:
    """The points of one run, SFT's per-prompt scores, and the best point so far."""

    def __init__(self, keep: str = "last", patience: int = 0, section: str = "ppo", every: str = "sample_every"):
        self.keep, self.patience, self.section, self.every = keep, patience, section, every
        self.points: list[dict] = []
        self.baseline: dict | None = None  # SFT's per-prompt {"proxy": [...], "gold": [...]}, from update 0
        self.best: dict | None = None  # the best point (by gold, else the proxy) and why
        self.best_weights: dict | None = None  # keep=best: its trainable tensors, on the CPU
        self.since_best = 0  # evaluations since the best point
        self.stopped_at: int | None = None  # the update early stop ended training at
        self.judge = "demo"  # the held-out judge behind gold (judge.gold)

    def add(self, step: int, *, proxy: list[float], gold: list[float | None], kl: dict, length: float,
            model=None) -> dict:
        """Record one evaluation (per-prompt scores, the KL measures) and return its point; with `model` (the
        unwrapped PolicyAndValue) a new best point's weights are kept when keep=best."""
        if self.baseline is None:  # update 0 (or a run that starts evaluating later): the reference answers
            self.baseline = {"proxy": list(proxy), "gold": list(gold)}
        gold_known = [g for g in gold if g is not None]
        point = {"step": step, "proxy": mean_std(proxy)[0], "gold": mean_std(gold_known)[0] if gold_known else None,
                 "win_rate_proxy": _win(proxy, self.baseline["proxy"]),
                 "win_rate_gold": _win(gold, self.baseline["gold"]), **kl, "length": length}
        self.points.append(point)
        self._consider(point, model)
        return point

    @property
    def judged_by(self) -> str:
        return "gold" if self.points and self.points[0]["gold"] is not None else "proxy"

    def _consider(self, point: dict, model) -> None:
        by = self.judged_by
        best = self.best
        if better(point[by], point["kl_k1"], best and best[by], best and best["kl_k1"]):
            self.best, self.since_best = dict(point), 0
            if self.keep == "best" and model is not None:
                self.best_weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                                     if p.requires_grad}
        else:
            self.since_best += 1
            if self.patience and self.since_best >= self.patience:
                self.stopped_at = point["step"]

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def restore_best(self, model) -> None:
        """keep=best: put the best point's weights back into `model` (the unwrapped PolicyAndValue)."""
        if self.best_weights is None:
            return
        import torch
        params = dict(model.named_parameters())
        missing = set(self.best_weights) - set(params)
        if missing:
            raise ValueError(f"the kept weights name parameters the model lacks: {sorted(missing)[:3]}")
        # copied in place by parameter name, every name checked above: load_state_dict(strict=False) would skip a
        # name that does not match without a word
        with torch.no_grad():
            for name, w in self.best_weights.items():
                params[name].copy_(w)

    def summary(self) -> dict:
        """What the manifest and the report say: which update was kept and why, the best and last points and
        the fits of Gao et al.'s forms."""
        if not self.points:
            return {}
        last = self.points[-1]
        kept = self.best if self.keep == "best" and self.best else last
        by = self.judged_by
        if self.keep == "best":
            why = (f"the best development {by} ({kept[by]:.4f}) of {len(self.points)} evaluations every "
                   f"{self.section}.{self.every} updates; ties go to the lower KL")
        else:
            why = f"{self.section}.keep=last: the last update"
        if self.stopped:
            why += (f"; training stopped early at update {self.stopped_at}, {self.patience} evaluations without a "
                    "better development score")
        return {"keep": self.keep, "kept_step": kept["step"], "kept_why": why, "judged_by": by,
                "prompts": len(self.baseline["proxy"]), "judge": self.judge,
                "best": self.best, "last": last, "stopped_at": self.stopped_at,
                "fits": curve_fits(self.points), "points": self.points}

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"points": self.points, "baseline": self.baseline, "best": self.best, "best_weights": self.best_weights,
                "since_best": self.since_best, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        self.points, self.baseline, self.best = state["points"], state["baseline"], state["best"]
        self.best_weights, self.since_best = state["best_weights"], state["since_best"]
        self.stopped_at = state["stopped_at"]
