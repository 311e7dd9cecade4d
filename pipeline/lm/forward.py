"""The training forward pass of a plain Llama, with no per-call overhead.

A Hugging Face forward builds masks, position ids, a cache, output records and an upcast
copy of the logits on every call; on a CPU-sized model that bookkeeping costs as much as the
math. The functions here run the same computation directly on the unchanged HF modules (same
parameters, saved the usual way): cached RoPE tables, fused RMSNorm, SDPA.

* `NextTokenLoss(hf_model)(inputs, targets)`: pretraining's loss (no padding: causal SDPA, no mask).
* `lean_llama_body(model)` + `llama_hidden_states(body, ids, attention_mask, first=...)`: final
  hidden states of a padded batch (PPO's policy, value, reference and reward forwards), positions
  from the mask as in HF; only positions >= `first` come out, and the last layer computes no others.
Other architectures, LoRA-injected layers, hooked (sharded) modules and gradient checkpointing
take the generic HF path. Tests check both paths agree, values and gradients.
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
        h = _decoder(body, x, *self._rope_tables(inputs.size(1), x), None, 0, self.training)
        return self.model.lm_head(h)

    def _rope_tables(self, seq_len: int, like: torch.Tensor):
        cached = self._rope
        if cached is None or cached[0].size(0) < seq_len or cached[0].device != like.device:
            positions = torch.arange(seq_len, device=like.device)[None]
            cos, sin_signed = _signed_rope(self.model.model.rotary_emb, positions, like.float())
            cached = self._rope = (cos[0].contiguous(), sin_signed[0].contiguous())
        cos, sin_signed = cached
        return cos[:seq_len].to(like.dtype), sin_signed[:seq_len].to(like.dtype)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a (left- or right-) padded batch: real tokens count 0, 1, 2, ... in every row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def padded_causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean SDPA mask: causal, and no real query sees a padding key. A left-padding
    query has no real key to see; letting it see itself keeps its (unused) output finite, not NaN."""
    t = attention_mask.size(1)
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril_()
    diagonal = torch.eye(t, dtype=torch.bool, device=attention_mask.device)
    return (causal & (attention_mask.bool()[:, None, :] | diagonal))[:, None]


def lean_llama_body(model: nn.Module) -> nn.Module | None:
    """The LlamaModel inside `model` (a causal LM or sequence classifier) when `llama_hidden_states`
    computes exactly what its HF forward does; None when the HF path must run: another
    architecture or RoPE variant, adapters or hooks on the modules (LoRA, FSDP, DeepSpeed ZeRO-3
    gather weights there), gradient checkpointing."""
    if not _is_plain_llama(model) or _checkpointing(model):
        return None
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if body is None or type(body).__name__ != "LlamaModel":
        return None
    for module in body.modules():
        kind = _LEAN_MODULES.get(type(module).__name__)
        if kind is None or (kind is not object and type(module) is not kind):
            return None
        if module._forward_hooks or module._forward_pre_hooks:
            return None
    if any(hasattr(p, "ds_id") for p in body.parameters()):  # DeepSpeed ZeRO-3 partitioned weights
        return None
    return body


# Module types the lean forward reads (by exact type: a LoRA or FSDP wrapper is a different type).
_LEAN_MODULES = {"LlamaModel": object, "LlamaDecoderLayer": object, "LlamaAttention": object, "LlamaMLP": object,
                 "LlamaRMSNorm": object, "LlamaRotaryEmbedding": object, "SiLUActivation": object,
                 "SiLU": nn.SiLU, "ModuleList": nn.ModuleList, "Linear": nn.Linear, "Embedding": nn.Embedding}


def llama_hidden_states(body: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                        first: int = 0) -> torch.Tensor:
    """Final-norm hidden states [B, T - first, D] of `body` (from `lean_llama_body`) for a padded
    batch; what HF's LlamaModel returns with position ids from the mask, at positions >= first."""
    x = body.embed_tokens(input_ids)  # keeps padding_idx: PAD's embedding gets no gradient, as in HF
    cos, sin_signed = _signed_rope(body.rotary_emb, positions_from_mask(attention_mask), x)
    mask = padded_causal_mask(attention_mask)
    return _decoder(body, x, cos[:, None], sin_signed[:, None], mask, first, body.training)


def _decoder(body, x, cos, sin_signed, mask, first: int, training: bool) -> torch.Tensor:
    layers = body.layers[:body.config.num_hidden_layers]
    for i, layer in enumerate(layers):
        # The last layer's queries, MLP and norm only run where an output is wanted.
        start = first if i == len(layers) - 1 else 0
        attn = _attention(layer.self_attn, _rms_norm(layer.input_layernorm, x), cos, sin_signed, mask, start,
                          training)
        x = x[:, start:] + attn
        x = x + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, x))
    return _rms_norm(body.norm, x)


def _signed_rope(rotary: nn.Module, positions: torch.Tensor, like: torch.Tensor):
    """HF's own cos/sin for these positions, with rotate_half's sign folded into sin:
    rotate_half(x) = roll(x, half) with the first half negated."""
    with torch.no_grad(), torch.autocast(like.device.type, enabled=False):
        cos, sin = rotary(like, positions)
    half = cos.size(-1) // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _checkpointing(model: nn.Module) -> bool:
    # transformers 5 renamed the flag (the old name warns); accept either.
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def _is_plain_llama(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
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


def _attention(attn: nn.Module, x: torch.Tensor, cos, sin_signed, mask, start: int, training: bool) -> torch.Tensor:
    """Self-attention of the positions >= start over all positions; mask None means causal, unpadded."""
    b, t, _ = x.shape
    d = attn.head_dim
    xq = x[:, start:] if start else x
    q = _rotate(attn.q_proj(xq).view(b, t - start, -1, d).transpose(1, 2), cos[..., start:, :],
                sin_signed[..., start:, :])
    k = _rotate(attn.k_proj(x).view(b, t, -1, d).transpose(1, 2), cos, sin_signed)
    v = attn.v_proj(x).view(b, t, -1, d).transpose(1, 2)
    if mask is None and start:  # SDPA's is_causal aligns a shorter query block top-left: spell it out
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril_()
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=None if mask is None else mask[..., start:, :], is_causal=mask is None,
        dropout_p=attn.attention_dropout if training else 0.0, scale=attn.scaling, enable_gqa=k.size(1) != q.size(1),
    )
    return attn.o_proj(y.transpose(1, 2).reshape(b, t - start, -1))


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))


def checkpoint_layers(model: nn.Module) -> int:
    """Activation (gradient) checkpointing for a model kept in eval mode, as PPO keeps its networks:
    HF checkpoints a decoder layer only when that layer is in training mode, so the layers alone
    are marked training (their attention and dropout modules stay in eval mode: no dropout).
    The lean forward then steps aside (`lean_llama_body`). Returns the number of layers checkpointed."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    # transformers 5 renamed the method (the old name warns); accept either.
    if hasattr(hf_model, "activation_checkpointing_enable"):
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in hf_model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.training = True
    return len(layers)
