"""Per-token rewards, KL estimators, GAE and masked whitening: the arithmetic of PPO for language.

Conventions (shared with rollout.py and losses.py): tensors are [batch, response_len]; index t is
the t-th generated token; `mask` is True for real response tokens, i.e. up to and including the
first EOS (or every token when the answer hit the length limit). Nothing at a masked position may
influence a loss: rewards, values, advantages and returns there are exactly zero.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    # Whitening is over the whole rollout batch, which under DDP is spread over the ranks.
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def masked_mean(x: torch.Tensor, mask: torch.Tensor, global_: bool = False) -> torch.Tensor:
    m = mask.to(x.dtype)
    s = torch.stack([(x * m).sum(), m.sum()])
    if global_:
        s = _all_reduce_sum(s)
    return s[0] / s[1].clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, global_: bool = False) -> torch.Tensor:
    m = mask.to(x.dtype)
    mean = masked_mean(x, mask, global_)
    s = torch.stack([((x - mean) ** 2 * m).sum(), m.sum()])
    if global_:
        s = _all_reduce_sum(s)
    n = s[1]
    var = s[0] / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)  # Bessel, so a full mask matches torch.var
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, global_: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries only; masked entries come out as zero.

    shift_mean=False returns (x - mean) / std + mean: the spread around the mean is scaled to one
    std and the mean is put back, so the batch's mean reward is kept (TRL's masked_whiten with
    shift_mean=False does the same). Signs are not kept: with mean 1 and std 2, a reward of -1
    becomes 0 and a reward of 3 becomes 2.
    """
    mean = masked_mean(x, mask, global_)
    var = masked_var(x, mask, global_=global_)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) at tokens sampled from the policy.

    k1 = log p - log q (unbiased, noisy, can be negative); k3 = (q/p - 1) - log(q/p) (unbiased,
    never negative, lower variance). Schulman, "Approximating KL divergence" (2020).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1 or k3")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real response token (the EOS, or the last token of a cut answer)."""
    return (mask.long().sum(1) - 1).clamp(min=0)


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL on every real token, plus the sequence score on the last one.

    Returns (rewards, non_score_rewards), both zero after the last real token.
    """
    m = mask.to(kl.dtype)
    non_score = -kl_coef * kl * m
    rewards = non_score.clone()
    rows = torch.arange(scores.size(0), device=scores.device)
    has_tokens = mask.any(1)
    rewards[rows[has_tokens], last_token_index(mask)[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards, non_score


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (Schulman et al., 2016).

    delta_t = r_t + gamma * V_{t+1} - V_t with V = 0 beyond the last real token (the episode ends
    there); A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = A + V), computed
    before any whitening and zero at masked positions.
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    n = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(n)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    returns = (advantages + values) * m
    return advantages, returns
