"""log p(token) from final hidden states: the output layer and the log-softmax as one autograd step.

Reinforcement learning on a language model needs the log-probability of one chosen token per
position, under a temperature. Composed from torch ops (linear, divide, logsumexp, gather) that
costs about ten passes over the [tokens, vocabulary] logits forward and backward, and as much as
the whole backbone of a small model. Here the forward keeps exp(logits - max), the softmax's
numerator, and the backward feeds it straight into the two matmuls (with per-row scales on the
narrow side) and adds the chosen token's term by a row gather / scatter: no pass over the logits.
The temperature scales the (narrow) hidden states, not the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """[N] log softmax(hidden @ weight.T / temperature)[i, targets[i]] for hidden [N, D], weight
    [V, D] (a bias-free output layer), in float32 whatever the matmul's (autocast) dtype."""
    return _TokenLogprobs.apply(hidden, weight, targets, 1.0 / temperature)


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temperature: float):
        scaled = hidden * inv_temperature if inv_temperature != 1.0 else hidden
        logits = F.linear(scaled, weight)
        ctx.mm_dtype = logits.dtype  # bf16 under autocast: the backward's matmuls use it too
        ctx.inv_temperature = inv_temperature
        logits = logits.float()
        chosen = logits.gather(-1, targets[:, None])
        top = logits.amax(-1, keepdim=True)
        numerator = logits.sub_(top).exp_()  # in place: the logits are not needed any more
        total = numerator.sum(-1, keepdim=True)
        ctx.save_for_backward(scaled, weight, targets, numerator, total)
        return (chosen - top - total.log()).squeeze(-1)

    @staticmethod
    def backward(ctx, grad):
        scaled, weight, targets, numerator, total = ctx.saved_tensors
        # d logp / d logits = onehot(target) - numerator / total. Both terms go through the matmuls
        # separately (the one-hot one as a row gather / scatter), so no [N, V] tensor is written.
        grad = grad.float()[:, None]
        row_scale = -grad / total
        dt = ctx.mm_dtype
        probs = numerator.to(dt)
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            w = weight.to(dt)
            grad_hidden = ((probs @ w).float() * row_scale + grad * w[targets].float()) * ctx.inv_temperature
            grad_hidden = grad_hidden.to(scaled.dtype)
        if ctx.needs_input_grad[1]:
            h = scaled.to(dt)
            grad_weight = (probs.t() @ (h.float() * row_scale).to(dt)).float()
            grad_weight.index_add_(0, targets, h.float() * grad)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None
