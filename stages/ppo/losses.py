"""The PPO objective: clipped surrogate for the policy, clipped squared error for the value.

Both are token sums divided by `n_tokens`, the number of real response tokens in the whole
minibatch (not the micro-batch), so accumulating micro-batch gradients gives exactly the
gradient of the minibatch's token-mean loss, however uneven the answers' lengths are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossTerms:
    loss: torch.Tensor  # what backward() is called on
    pg_loss: torch.Tensor
    vf_loss: torch.Tensor
    stats: dict  # token sums (divide by the token count to get means); detached


def ppo_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
             new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
             *, n_tokens: float, cliprange: float = 0.2, cliprange_value: float = 0.2,
             vf_coef: float = 0.1) -> LossTerms:
    m = mask.to(new_logprobs.dtype)
    log_ratio = (new_logprobs - old_logprobs) * m
    ratio = torch.exp(log_ratio)
    # Maximise A * ratio, pessimistically: the larger of the two losses.
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    pg_tokens = torch.maximum(pg_unclipped, pg_clipped)
    # The value may move at most cliprange_value from what it predicted at rollout time.
    v_clipped = old_values + (new_values - old_values).clamp(-cliprange_value, cliprange_value)
    vf_tokens = 0.5 * torch.maximum((new_values - returns) ** 2, (v_clipped - returns) ** 2)
    pg_loss = (pg_tokens * m).sum() / n_tokens
    vf_loss = (vf_tokens * m).sum() / n_tokens
    with torch.no_grad():
        stats = {
            "pg_loss": (pg_tokens * m).sum(),
            "vf_loss": (vf_tokens * m).sum(),
            "pg_clipfrac": ((pg_clipped > pg_unclipped).to(m.dtype) * m).sum(),
            "vf_clipfrac": (((v_clipped - returns) ** 2 > (new_values - returns) ** 2).to(m.dtype) * m).sum(),
            "approx_kl": (0.5 * log_ratio**2 * m).sum(),
            "ratio": (ratio * m).sum(),
            "ratio_sq": (ratio**2 * m).sum(),
            "tokens": m.sum(),
        }
    return LossTerms(pg_loss + vf_coef * vf_loss, pg_loss, vf_loss, stats)
