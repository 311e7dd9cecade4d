"""The four PPO networks: trained policy and value, frozen reference and reward model.

policy    <- SFT (a causal LM);      reference <- the same SFT weights, frozen (or, with LoRA, the
value     <- the reward model        policy with adapters disabled: one base model in memory);
             (a separate AutoModelForSequenceClassification, scalar head, trained);
reward    <- the reward stage's model, frozen.
All four are put in eval mode by the trainer: no dropout anywhere, so the first PPO ratio is 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from pipeline.errors import UserError
from pipeline.loading import load_sequence_scorer
from pipeline.model import load_causal_lm, set_generation_defaults
from pipeline.tokenizer import load_tokenizer


@dataclass
class PPOModels:
    policy: torch.nn.Module
    ref: torch.nn.Module | None  # None: LoRA, reference = adapters disabled
    reward: torch.nn.Module
    value: torch.nn.Module
    tokenizer: object


def load_scalar_model(source: str, what: str, *, trained_head: bool):
    """A one-output sequence classifier; the reward model must bring its trained score head (the value
    model may start a fresh one)."""
    return load_sequence_scorer(source, what, trained_head=trained_head, dtype=torch.float32)


def load_models(ppo_cfg, policy_source: str, reward_source: str) -> PPOModels:
    tokenizer, changes = load_tokenizer(policy_source)
    if changes:
        raise UserError(f"the policy tokenizer in {policy_source} is not chat-ready ({'; '.join(changes)}); "
                        "PPO needs the tokenizer the SFT stage saved.")
    rm_tokenizer, _ = load_tokenizer(reward_source)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"the reward model in {reward_source} uses a different tokenizer from the policy in "
                        f"{policy_source}; PPO scores token ids directly, so both must come from the same run.")
    policy = load_causal_lm(policy_source, dtype=torch.float32)
    set_generation_defaults(policy, tokenizer)
    ref = None
    if ppo_cfg.lora.enabled:
        from peft import get_peft_model

        from pipeline.hf_glue import lora_config

        # Dropout off: LoRA dropout would make the ratio and the KL noisy.
        policy = get_peft_model(policy, lora_config(dataclasses.replace(ppo_cfg.lora, dropout=0.0)))
    else:
        ref = load_causal_lm(policy_source, dtype=torch.float32)
    reward = load_scalar_model(reward_source, "reward model", trained_head=True)
    value = load_scalar_model(ppo_cfg.value_model or reward_source, "value model", trained_head=False)
    for m in (reward, value):
        m.config.pad_token_id = tokenizer.pad_token_id
    return PPOModels(policy, ref, reward, value, tokenizer)
