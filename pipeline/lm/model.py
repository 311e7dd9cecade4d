"""The GPT: a Llama-style decoder (RoPE, RMSNorm, SwiGLU, SDPA) built with `transformers`,
so TRL, peft, `generate` and every other HF tool work on it unchanged."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

from pipeline.config.schema import ModelSection
from pipeline.errors import UserError
from pipeline.lm.chat_format import turn_end_ids
from pipeline.lm.loading import loading, require_causal_lm


def swiglu_width(n_embd: int) -> int:
    # 8/3 * d keeps a 3-matrix SwiGLU at the parameter count of a 4*d GELU MLP.
    return 32 * -(-(8 * n_embd // 3) // 32)


def llama_config(cfg: ModelSection, vocab_size: int, pad_id: int, eos_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size or swiglu_width(cfg.n_embd),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head or cfg.n_head,
        max_position_embeddings=cfg.max_position_embeddings or cfg.block_size,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=cfg.dropout,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        use_cache=True,
    )


def build_model(cfg: ModelSection, tokenizer, attn_implementation: str | None = None):
    """A fresh model from the preset, or `cfg.init_from` loaded and resized to the tokenizer."""
    attn = attn_implementation or cfg.attn_implementation
    if cfg.init_from:
        model = load_causal_lm(cfg.init_from, attn_implementation=attn)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    else:
        config = llama_config(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        config._attn_implementation = attn
        model = LlamaForCausalLM(config)
    set_generation_defaults(model, tokenizer)
    return model


def load_causal_lm(name_or_path: str, *, dtype=None, attn_implementation: str | None = "sdpa",
                   trust_remote_code: bool = False, quantization_config=None):
    """A causal LM from a folder or hub name; a folder that holds another kind of model (a reward model),
    or whose weights do not fit its config.json, is one clear line instead of a model with random weights."""
    require_causal_lm(name_or_path)
    with loading(name_or_path, "causal LM"):
        model, info = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, quantization_config=quantization_config, output_loading_info=True,
        )
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("lm_head")]  # a tied head is fine
    unused = sorted(info.get("unexpected_keys", ()))  # e.g. config.json says fewer layers than the weights hold
    if missing or info.get("mismatched_keys") or unused:
        bad = missing or [str(m[0]) for m in info.get("mismatched_keys", ())] or unused
        raise UserError(f"{name_or_path}: its weights do not fit its config.json ({len(bad)} parameters missing, unused "
                        f"or of another shape, e.g. {bad[0]}), so the model would not be the one saved: "
                        "point it at the folder a stage wrote, or fix config.json.")
    return model


def set_generation_defaults(model, tokenizer) -> None:
    """EOS and the chat template's end of turn stop generation, PAD pads; sampling knobs are chosen
    per call, not baked in."""
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:  # a foreign tokenizer's BOS (ours has none)
        model.config.bos_token_id = tokenizer.bos_token_id
    stops = sorted(turn_end_ids(tokenizer) - {tokenizer.eos_token_id})
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, *stops] if stops else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, do_sample=True,
        temperature=1.0, top_k=0, top_p=1.0,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight used in a matmul, plus attention over the context
    (the PaLM appendix estimate). The embedding lookup is free; a tied head still multiplies."""
    cfg = model.config
    n = count_parameters(model)
    if not cfg.tie_word_embeddings:
        n -= cfg.vocab_size * cfg.hidden_size
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def describe(model, seq_len: int) -> str:
    n = count_parameters(model)
    return (f"model: {n / 1e6:.2f}M parameters, {flops_per_token(model, seq_len) / 1e6:.1f} MFLOP per "
            f"training token at context {seq_len}")


def model_dtype(run_dtype: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 on GPUs that support it, fp32 on the CPU (bf16 is slower there)."""
    if run_dtype != "auto":
        return getattr(torch, run_dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
