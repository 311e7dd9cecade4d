"""The training forward pass: next-token loss from a causal LM, with no per-call overhead.

A Hugging Face forward builds masks, position ids, a cache, output records and an upcast
copy of the logits on every call; on a CPU-sized model that bookkeeping costs as much as the
math. `NextTokenLoss` wraps the unchanged HF model (same parameters, saved the usual way) and,
for Llama-style models, runs the same computation directly on its modules: causal SDPA without
a mask, cached RoPE tables, fused RMSNorm, cross-entropy on the logits. Other architectures
(e.g. `model.init_from=gpt2`) take the generic HF path. A test checks both paths agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NextTokenLoss(nn.Module):
    """`loss = NextTokenLoss(hf_model)(inputs, targets)`: mean cross-entropy over all positions."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.lean = _is_plain_llama(model)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.lean:
            return self.model(input_ids=inputs, use_cache=False).logits
        body = self.model.model
        # No padding_idx: pretraining batches hold no padding, and its masked backward is slower.
        x = F.embedding(inputs, body.embed_tokens.weight)
        cos, sin = self._rope_tables(inputs.size(1), x)
        for layer in body.layers:
            x = x + _attention(layer.self_attn, _rms_norm(layer.input_layernorm, x), cos, sin, self.training)
            x = x + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, x))
        return self.model.lm_head(_rms_norm(body.norm, x))

    def _rope_tables(self, seq_len: int, like: torch.Tensor):
        cached = self._rope
        if cached is None or cached[0].size(0) < seq_len or cached[0].device != like.device:
            rotary = self.model.model.rotary_emb
            positions = torch.arange(seq_len, device=like.device)[None]
            with torch.no_grad(), torch.autocast(like.device.type, enabled=False):
                cos, sin = rotary(like.float(), positions)
            half = cos.size(-1) // 2
            # rotate_half(x) = roll(x, half) with the first half negated: fold that sign into sin.
            sin_signed = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
            cached = self._rope = (cos[0].contiguous(), sin_signed.contiguous())
        cos, sin_signed = cached
        return cos[:seq_len].to(like.dtype), sin_signed[:seq_len].to(like.dtype)


def _is_plain_llama(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    rope = getattr(cfg, "rope_scaling", None) or {}
    plain_rope = rope.get("rope_type", rope.get("type", "default")) == "default"
    return (plain_rope and cfg.hidden_act == "silu" and not cfg.mlp_bias and not cfg.attention_bias
            and getattr(cfg, "pretraining_tp", 1) == 1)


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(x, norm.weight, norm.variance_epsilon)


class _RMSNorm(torch.autograd.Function):
    """RMSNorm with a hand-written backward: half the kernels of the composite one autograd builds."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        x_hat = (x * rstd).to(x.dtype)
        ctx.save_for_backward(x_hat, rstd, weight)
        return x_hat * weight

    @staticmethod
    def backward(ctx, grad):
        x_hat, rstd, weight = ctx.saved_tensors
        grad_weight = (grad * x_hat).flatten(0, -2).sum(0)
        g = grad * weight
        grad_x = (g - x_hat * (g * x_hat).mean(-1, keepdim=True)) * rstd
        return grad_x.to(x_hat.dtype), grad_weight.to(weight.dtype), None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """RoPE: x*cos + rotate_half(x)*sin, with rotate_half's sign folded into the cached sin."""
    half = x.size(-1) // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * sin_signed


def _attention(attn: nn.Module, x: torch.Tensor, cos, sin_signed, training: bool) -> torch.Tensor:
    b, t, _ = x.shape
    d = attn.head_dim
    q = _rotate(attn.q_proj(x).view(b, t, -1, d).transpose(1, 2), cos, sin_signed)
    k = _rotate(attn.k_proj(x).view(b, t, -1, d).transpose(1, 2), cos, sin_signed)
    v = attn.v_proj(x).view(b, t, -1, d).transpose(1, 2)
    y = F.scaled_dot_product_attention(
        q, k, v, is_causal=True, dropout_p=attn.attention_dropout if training else 0.0,
        scale=attn.scaling, enable_gqa=k.size(1) != q.size(1),
    )
    return attn.o_proj(y.transpose(1, 2).reshape(b, t, -1))


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
