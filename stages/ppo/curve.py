"""The over-optimisation curve of a PPO run, and the best point on it.

Every `ppo.sample_every` updates (and at update 0, the SFT policy itself) the trainer answers the same
development prompts under a fixed seed (stages/ppo/evaluation.py) and `Curve.add` turns the answers into one
point: the proxy (the reward model's score in PPO's units), gold (the held-out judge), the win rates of these
answers over SFT's answers to the same prompts (update 0's, kept for the whole run), KL(policy || SFT) and the
answer length. Gao et al. draw proxy and gold against d = sqrt(KL); pipeline/judge/overoptimisation.py holds the
curve (`Curve`, shared with GRPO/RLOO) and fits it; this module measures PPO's KL.

KL is measured on the evaluation's own answers, sampled from the policy at PPO's temperature: per answer (the sum
over its tokens, what PPO's penalty adds up) and per token (that sum over all answers' tokens), each as k1 (the
log ratio) and k3 (never negative); d uses k1 per answer, the KL every report quotes (k3's mean over 64 answers
had the heavier tail on the tiny preset: 3.0 against k1's 2.0 at one point where the two agree elsewhere).

`keep=best` keeps the trainable weights of the point with the best gold (ties: lower KL) on the CPU; they go into
every checkpoint with the rest of the curve, so a run killed and resumed keeps the same best point. Early stop
(`early_stop_patience` M > 0) ends training once M evaluations in a row have not beaten the best. Only the
development prompts choose: evaluation's test prompts are never seen here.
"""

from __future__ import annotations

import torch

from stages.ppo.advantages import kl_per_token


def kl_measures(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """KL(policy || reference) of sampled answers: k1 and k3, per answer (mean over answers of the sum over an
    answer's tokens) and per token (over all tokens of all answers)."""
    tokens = mask.sum().clamp(min=1).item()
    out = {}
    for est in ("k1", "k3"):
        per_answer = (kl_per_token(logprobs, ref_logprobs, est) * mask).sum(1)
        out[f"kl_{est}"] = per_answer.mean().item()
        out[f"kl_{est}_token"] = per_answer.sum().item() / tokens
    return out
