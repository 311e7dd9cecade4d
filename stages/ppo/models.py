"""The four PPO networks: trained policy and value, frozen reference and reward model.

policy    <- SFT (a causal LM, fp32: its weights are the master copy AdamW updates);
reference <- the same SFT weights, frozen, in the run's dtype (or, with LoRA, the policy with its
             adapters disabled: one base model in memory);
value     <- the reward model (a separate AutoModelForSequenceClassification, scalar head, fp32,
             trained), or with LoRA by default a scalar head on the policy's base (stages/ppo/value.py);
reward    <- the reward stage's model, frozen, in the run's dtype.
Frozen weights (reference, reward, a LoRA base) are held in `frozen_dtype`: bf16 on GPUs that have it
(run.dtype=auto), fp32 on the CPU, as autocast computes with them anyway. With ppo.lora.qlora the
LoRA base is 4-bit (CUDA). All four are put in eval mode by the trainer: no dropout anywhere, so the
first PPO ratio is 1.
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pipeline.errors import UserError
from pipeline.judge.ensemble import with_ensemble
from pipeline.lm.loading import load_sequence_scorer
from pipeline.lm.model import load_causal_lm, set_generation_defaults
from pipeline.lm.tokenizer import load_tokenizer
from pipeline.runtime.device import is_main_process
from stages.ppo.value import ValueHead


@dataclass
class PPOModels:
    policy: torch.nn.Module
    ref: torch.nn.Module | None  # None: LoRA, reference = adapters disabled
    reward: torch.nn.Module
    value: torch.nn.Module
    tokenizer: object


def shares_base(ppo_cfg) -> bool:
    """LoRA with a value head on the policy's base instead of a separate value model."""
    return ppo_cfg.lora.enabled and ppo_cfg.lora_value != "model"


def load_policy(ppo_cfg, policy_source: str, tokenizer, frozen_dtype: torch.dtype):
    """The SFT model, fp32; with LoRA its frozen base in `frozen_dtype` (4-bit with QLoRA) and fp32
    adapters (peft keeps adapter weights in fp32 over a half-precision base)."""
    if not ppo_cfg.lora.enabled:
        policy = load_causal_lm(policy_source, dtype=torch.float32)
        set_generation_defaults(policy, tokenizer)
        return policy
    from peft import get_peft_model

    from pipeline.lm.hf_glue import lora_config, quantization_config

    policy = load_causal_lm(policy_source, dtype=frozen_dtype, quantization_config=quantization_config(ppo_cfg.lora))
    set_generation_defaults(policy, tokenizer)
    with warnings.catch_warnings():  # peft 0.21 still reads transformers' old `is_gradient_checkpointing` name
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        # Dropout off: LoRA dropout would make the ratio and the KL noisy.
        return get_peft_model(policy, lora_config(dataclasses.replace(ppo_cfg.lora, dropout=0.0)))


def load_models(ppo_cfg, policy_source: str, reward_source: str,
                frozen_dtype: torch.dtype = torch.float32) -> PPOModels:
    tokenizer, changes = load_tokenizer(policy_source)
    if changes:
        raise UserError(f"the policy tokenizer in {policy_source} is not chat-ready ({'; '.join(changes)}); "
                        "PPO needs the tokenizer the SFT stage saved.")
    rm_tokenizer, _ = load_tokenizer(reward_source)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"the reward model in {reward_source} uses a different tokenizer from the policy in "
                        f"{policy_source}; PPO scores token ids directly, so both must come from the same run.")
    policy = load_policy(ppo_cfg, policy_source, tokenizer, frozen_dtype)
    ref = None if ppo_cfg.lora.enabled else load_causal_lm(policy_source, dtype=frozen_dtype)
    reward = load_sequence_scorer(reward_source, "reward model", trained_head=True, dtype=frozen_dtype)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward = with_ensemble(reward, reward_source, how=ppo_cfg.reward_aggregate, coef=ppo_cfg.reward_uncertainty_coef,
                           dtype=frozen_dtype)  # reward.ensemble > 1: the members' aggregate
    if shares_base(ppo_cfg):
        value = ValueHead(policy.get_base_model().config.hidden_size, on_adapters=ppo_cfg.lora_value == "head")
    else:
        # trained, so fp32 like the policy; a fresh score head is fine (the value loss trains it)
        value = load_sequence_scorer(ppo_cfg.value_model or reward_source, "value model", trained_head=False,
                                     dtype=torch.float32)
        value.config.pad_token_id = tokenizer.pad_token_id
    return PPOModels(policy, ref, reward, value, tokenizer)


def frozen_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_memory(cfg, policy_source: str, reward_source: str, device: torch.device, frozen_dtype: torch.dtype,
                 world: int = 1) -> None:
    """Print the memory estimate of the four networks (read from headers, nothing loaded) and refuse,
    in one line with the options that would fit, when the device has too little free."""
    from stages.ppo import memory

    p = cfg.ppo
    policy = memory.model_size(policy_source)
    reward = memory.model_size(reward_source)
    value = memory.model_size(p.value_model) if p.value_model and not shares_base(p) else reward
    micro = max(1, p.batch_size // world // p.num_minibatches // p.grad_accum)
    plan = memory.PPOPlan(
        frozen_dtype=frozen_dtype_name(frozen_dtype), lora=p.lora.enabled, qlora=p.lora.enabled and p.lora.qlora,
        lora_r=p.lora.r, lora_targets=tuple(p.lora.target_modules), lora_value=p.lora_value,
        gradient_checkpointing=p.gradient_checkpointing, micro_batch=micro,
        generation_batch=p.generation_batch_size or max(1, p.batch_size // world),
        prompt_len=p.max_prompt_length, answer_len=p.max_new_tokens)
    parts = memory.ppo_memory(policy, reward, value, plan)
    budget = memory.available_bytes(device)
    where = f"{device.type}:{device.index}" if device.type == "cuda" and device.index is not None else device.type
    if is_main_process():  # every rank checks its own device; one prints
        print(memory.describe("ppo", parts, budget, where))
    if p.check_memory:
        alternatives = memory.ppo_alternatives(policy, reward, value, plan, cuda=device.type == "cuda")
        memory.check_fits("ppo", parts, budget, alternatives, where)


def merged_policy(policy, out_dir, policy_source: str, tokenizer):
    """A LoRA policy as a plain causal LM with the adapters merged in fp32, as the SFT weights are:
    a bf16 or 4-bit base would round the small LoRA update away, so the saved adapter is then merged
    into the base reloaded in fp32. The adapter itself is kept in out_dir/adapter."""
    policy.save_pretrained(out_dir / "adapter")
    base = policy.get_base_model()
    if base.dtype == torch.float32 and not getattr(base, "is_loaded_in_4bit", False):
        return policy.merge_and_unload()
    from peft import PeftModel

    fp32_base = load_causal_lm(policy_source, dtype=torch.float32)
    set_generation_defaults(fp32_base, tokenizer)
    return PeftModel.from_pretrained(fp32_base, out_dir / "adapter").merge_and_unload()


def save_value(value, out_dir) -> None:
    """The value model into out_dir/value: a separate model as a HF folder; a head on the shared base
    as its two tensors (value_head.safetensors) and what it reads (value_head.json)."""
    import json

    from safetensors.torch import save_file

    out = out_dir / "value"
    if not isinstance(value, ValueHead):
        value.save_pretrained(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in value.state_dict().items()}, out / "value_head.safetensors")
    reads = "the LoRA policy's hidden states (adapter/ on the SFT model)" if value.on_adapters else \
        "the SFT model's hidden states (adapters off)"
    (out / "value_head.json").write_text(json.dumps(
        {"hidden_size": value.score.in_features, "on_adapters": value.on_adapters, "reads": reads}, indent=2) + "\n")


@contextmanager
def adapters_off(peft_model):
    """LoRA: the reference is the policy with its adapters disabled (one base model in memory)."""
    with peft_model.disable_adapter():
        yield peft_model
