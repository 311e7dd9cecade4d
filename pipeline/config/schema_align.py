"""The config sections of the alignment methods beside PPO (stages/align: DPO, GRPO, RLOO), kept apart
from pipeline/config/schema.py so each file stays one screenful of sections; RunConfig there holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.loader import limits
from pipeline.errors import UserError
from pipeline.config.schema_lora import LoraSection


@dataclass
class AlignSection:
    """Which alignment method `python -m stages.align` runs (`make dpo|grpo|rloo` set it)."""

    method: Literal["dpo", "grpo", "rloo"] = "dpo"


@limits(eval_pairs="> 0", beta="> 0", max_length="> 0", lr="> 0", epochs="> 0", max_steps="> 0 | -1",
        batch_size="> 0", grad_accum="> 0", warmup_ratio="[0, 1)", weight_decay=">= 0", eval_every="> 0",
        log_every="> 0", save_every="> 0", report_prompts="> 0", max_new_tokens="> 0", temperature="> 0")
@dataclass
class DPOSection:
    """Direct preference optimisation (TRL DPOTrainer) of the SFT model on preference pairs."""

    policy: str | None = None  # default runs/<name>/sft (also the frozen reference)
    data: str = "reward"  # reward: the reward stage's training pairs (+ runs/<name>/rank/rankings.jsonl); or a file
    val_data: str | None = "reward"  # held-out pairs: the reward stage's held-out set; a file; None = no evaluation
    eval_pairs: int | None = 512  # held-out pairs per evaluation (the first ones); None = all
    beta: float = 0.1  # strength of the KL leash to the reference (higher: closer to SFT)
    loss_type: str = "sigmoid"  # any TRL DPO loss: sigmoid (DPO), ipo, hinge, robust, ...
    max_length: int = 256  # prompt + answer tokens; longer pairs are dropped and counted
    lr: float = 5e-6
    epochs: float = 1.0  # passes over the pairs (the reward model's own epochs is a fair alternative)
    max_steps: int = -1  # >0 overrides epochs
    batch_size: int = 8  # pairs per step
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    eval_every: int = 100
    log_every: int = 10
    save_every: int = 100
    resume: bool = True
    report_prompts: int = 64  # held-out prompts answered (vs SFT) for samples.md and report.json
    max_new_tokens: int = 48
    temperature: float = 0.7
    lora: LoraSection = field(default_factory=LoraSection)


@limits(total_episodes="> 0", num_generations="> 1", batch_size="> 0", grad_accum="> 0", num_iterations="> 0",
        lr="> 0", warmup_ratio="[0, 1)", weight_decay=">= 0", beta=">= 0", epsilon="> 0", max_new_tokens="> 0",
        max_prompt_length="> 0", temperature="> 0", top_k=">= 0", top_p="(0, 1]", log_every="> 0",
        save_every="> 0", report_prompts="> 0")
@dataclass
class OnlineRLSection:
    """Online RL from the reward model with TRL's GRPO/RLOO trainers: `num_generations` answers per
    prompt, each scored exactly as PPO scores it (pipeline.judge.scoring.RewardFunction with
    ppo.missing_eos_penalty / missing_eos_mode / reward_clip and reward_stats.json)."""

    policy: str | None = None  # default runs/<name>/sft (also the frozen reference)
    reward_model: str | None = None  # default runs/<name>/reward
    data: str = "demo"  # prompts, as ppo.data
    total_episodes: int | None = None  # sampled answers in all; None = ppo.total_episodes (a fair budget)
    num_generations: int = 4  # answers per prompt: the group the baseline is computed over
    batch_size: int = 16  # answers per optimizer step (a multiple of num_generations)
    grad_accum: int = 1
    num_iterations: int = 1  # optimisation passes over each generated batch
    lr: float = 3e-5
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    beta: float = 0.05  # KL coefficient to the reference (PPO's kl_coef default)
    epsilon: float = 0.2  # clip range of the importance ratio
    max_new_tokens: int = 48
    max_prompt_length: int = 128  # longer prompts are dropped and counted
    temperature: float = 0.7  # PPO's sampling temperature
    top_k: int = 0
    top_p: float = 1.0
    log_every: int = 1
    save_every: int = 10
    resume: bool = True
    report_prompts: int = 64  # held-out prompts answered (vs SFT) for samples.md and report.json
    lora: LoraSection = field(default_factory=LoraSection)

    def validate(self) -> None:
        name = type(self).__name__[: -len("Section")].lower()
        if self.num_generations < 2:
            raise UserError(f"{name}.num_generations={self.num_generations}: the baseline needs 2 or more answers "
                            "per prompt.")
        if self.batch_size % self.num_generations:
            raise UserError(f"{name}.batch_size={self.batch_size} is not a multiple of {name}.num_generations="
                            f"{self.num_generations}: each step trains on whole groups of answers.")
        if self.temperature <= 0:
            raise UserError(f"{name}.temperature must be > 0: the policy gradient needs sampled answers.")


@dataclass
class GRPOSection(OnlineRLSection):
    """GRPO: advantage = reward minus the group mean, scaled by the group's std (scale_rewards)."""

    loss_type: str = "grpo"  # TRL's loss aggregation: grpo, dapo, dr_grpo, bnpo, ...
    scale_rewards: Literal["group", "batch", "none"] = "group"


@dataclass
class RLOOSection(OnlineRLSection):
    """RLOO: advantage = reward minus the mean of the other answers to the same prompt."""

    normalize_advantages: bool = False
