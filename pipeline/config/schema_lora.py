"""The LoRA options every trainable stage's section carries (sft.lora, reward.lora, ppo.lora, dpo.lora, ...):
one definition, used by pipeline/config/schema.py and pipeline/config/schema_align.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config.loader import limits


@limits(r="> 0", alpha="> 0", dropout="[0, 1)")
@dataclass
class LoraSection:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    qlora: bool = False  # 4-bit base weights; needs bitsandbytes and a CUDA GPU
