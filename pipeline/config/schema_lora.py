"""The LoRA options every trainable stage's section carries (sft.lora, reward.lora, ppo.lora, dpo.lora, ...):
one definition, used by pipeline/config/schema.py and pipeline/config/schema_align.py."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.fields import setting


@dataclass
class LoraSection:
    """LoRA: train small low-rank adapters beside frozen base weights instead of the whole model."""

    enabled: bool = setting(False, "train LoRA adapters instead of every weight (less memory per model)")
    r: int = setting(16, "rank of each adapter (its inner width); more: more capacity and memory", range="> 0")
    alpha: int = setting(32, "adapter scale numerator: the update is scaled by alpha / r", range="> 0")
    dropout: float = setting(0.05, "dropout on the adapters' input while training (a probability)", range="[0, 1)")
    target_modules: list[str] = setting(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                        "the linear layers (by module name) that get an adapter")
    qlora: bool = setting(False, "hold the base weights in 4 bits (QLoRA); needs bitsandbytes and a CUDA GPU")
