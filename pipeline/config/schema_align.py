"""The config sections of the alignment methods beside PPO (stages/align: DPO, GRPO, RLOO), kept apart
from pipeline/config/schema.py so each file stays one screenful of sections; RunConfig there holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.fields import setting
from pipeline.config.schema_lora import LoraSection
from pipeline.errors import UserError


@dataclass
class AlignSection:
    """Which alignment method `python -m stages.align` runs (`make dpo|grpo|rloo` set it)."""

    method: Literal["dpo", "grpo", "rloo"] = setting("dpo", "the method the align stage runs (make dpo, grpo and rloo set it)")


@dataclass
class DPOSection:
    """Direct preference optimisation (TRL DPOTrainer) of the SFT model on preference pairs."""

    policy: str | None = setting(None, "the model DPO trains, also its frozen reference; null: runs/<name>/sft")
    data: str = setting("reward", "training pairs: reward (the reward stage's pairs and this run's rankings) or a file")
    val_data: str | None = setting("reward", "held-out pairs: reward (the reward stage's held-out set), a file, "
                                   "or null for no evaluation")
    eval_pairs: int | None = setting(512, "held-out pairs scored per evaluation (the first ones); null: all",
                                     range="> 0")
    beta: float = setting(0.1, "strength of the KL leash to the reference: higher stays closer to SFT", range="> 0")
    loss_type: str = setting("sigmoid", "any TRL DPO loss: sigmoid (DPO), ipo, hinge, robust, ...")
    max_length: int = setting(256, "prompt + answer tokens; longer pairs are dropped and counted", range="> 0")
    lr: float = setting(5e-6, "peak learning rate (cosine decay after the warmup)", range="> 0")
    epochs: float = setting(1.0, "passes over the training pairs", range="> 0")
    max_steps: int = setting(-1, "optimizer steps; -1: as many as epochs take", range="> 0 | -1")
    pairs_per_step: int | None = setting(None, "pairs per step over all processes (whatever their number); null: "
                                         "batch_size x grad_accum", range="> 0")
    batch_size: int = setting(8, "most pairs per micro-batch on each process; accumulation makes up the step",
                              range="> 0")
    grad_accum: int = setting(1, "micro-batches per step when pairs_per_step is null (else derived)",
                              range="> 0")
    warmup_ratio: float = setting(0.05, "share of the steps over which the learning rate rises from 0", range="[0, 1)")
    weight_decay: float = setting(0.0, "AdamW weight decay", range=">= 0")
    eval_every: int = setting(100, "steps between held-out evaluations", range="> 0")
    log_every: int = setting(10, "steps between logged metrics", range="> 0")
    save_every: int = setting(100, "steps between checkpoints (what a killed run resumes from)", range="> 0")
    resume: bool = setting(True, "continue an unfinished run made with the same settings from its last checkpoint")
    report_prompts: int = setting(64, "held-out prompts answered (against SFT) for samples.md and report.json",
                                  range="> 0")
    max_new_tokens: int = setting(48, "answer length limit of the report, in tokens", range="> 0")
    temperature: float = setting(0.7, "sampling temperature of the report's answers", range="> 0")
    lora: LoraSection = field(default_factory=LoraSection)


@dataclass
class OnlineRLSection:
    """Online RL from the reward model with TRL's GRPO/RLOO trainers: `num_generations` answers per
    prompt, each scored exactly as PPO scores it (pipeline.judge.scoring.RewardFunction with
    ppo.missing_eos_penalty / missing_eos_mode / reward_clip and reward_stats.json)."""

    policy: str | None = setting(None, "the model trained, also its frozen reference; null: runs/<name>/sft")
    reward_model: str | None = setting(None, "the reward model that scores the answers; null: runs/<name>/reward")
    data: str = setting("demo", "training prompts, as ppo.data: demo, or a file or hub name with a prompt field")
    total_episodes: int | None = setting(None, "answers sampled in all; null: ppo.total_episodes (PPO's budget)",
                                         range="> 0")
    num_generations: int = setting(4, "answers per prompt: the group whose rewards make the baseline", range=">= 2")
    answers_per_step: int | None = setting(None, "answers per step over all processes, a multiple of "
                                           "num_generations; null: batch_size x grad_accum", range="> 0")
    batch_size: int = setting(16, "most answers per micro-batch on each process; accumulation makes up the step",
                              range="> 0")
    grad_accum: int = setting(1, "micro-batches per step when answers_per_step is null (else derived)",
                              range="> 0")
    num_iterations: int = setting(1, "optimisation passes over each generated batch", range="> 0")
    lr: float = setting(3e-5, "peak learning rate (cosine decay after the warmup)", range="> 0")
    warmup_ratio: float = setting(0.0, "share of the steps over which the learning rate rises from 0", range="[0, 1)")
    weight_decay: float = setting(0.0, "AdamW weight decay", range=">= 0")
    beta: float = setting(0.05, "KL coefficient to the reference (as ppo.kl_coef)", range=">= 0")
    epsilon: float = setting(0.2, "clip range of the importance ratio (as ppo.cliprange)", range="> 0")
    max_new_tokens: int = setting(48, "answer length limit, in tokens", range="> 0")
    max_prompt_length: int = setting(128, "prompt length limit in tokens; longer prompts are dropped and counted",
                                     range="> 0")
    temperature: float = setting(0.7, "sampling temperature (PPO's); the policy gradient needs it above 0",
                                 range="> 0")
    top_k: int = setting(0, "sample only from the k likeliest tokens; 0: no limit", range=">= 0")
    top_p: float = setting(1.0, "sample only from the likeliest tokens holding this much probability; 1: all",
                           range="(0, 1]")
    log_every: int = setting(1, "optimizer steps between logged metrics", range="> 0")
    save_every: int = setting(10, "optimizer steps between checkpoints (what a killed run resumes from)",
                              range="> 0")
    resume: bool = setting(True, "continue an unfinished run made with the same settings from its last checkpoint")
    report_prompts: int = setting(64, "held-out prompts answered (against SFT) for samples.md and report.json",
                                  range="> 0")
    sample_every: int = setting(5, "optimizer steps between development evaluations (the "
                                "over-optimisation curve), as ppo.sample_every", range="> 0")
    keep: Literal["last", "best"] = setting("last", "the policy committed: the last step's, or the development "
                                            "evaluation's with the best gold (ties: lower KL)")
    early_stop_patience: int = setting(0, "stop after this many development evaluations without a better "
                                       "gold; 0: never", range=">= 0")
    lora: LoraSection = field(default_factory=LoraSection)

    def validate(self) -> None:
        name = type(self).__name__[: -len("Section")].lower()
        per_step, key = ((self.answers_per_step, "answers_per_step") if self.answers_per_step is not None
                         else (self.batch_size, "batch_size") if self.grad_accum == 1
                         else (self.batch_size * self.grad_accum, "batch_size x grad_accum"))
        if per_step % self.num_generations:
            raise UserError(f"{name}.{key}={per_step} is not a multiple of {name}.num_generations="
                            f"{self.num_generations}: each step trains on whole groups of answers.")


@dataclass
class GRPOSection(OnlineRLSection):
    """GRPO: advantage = reward minus the group mean, scaled by the group's std (scale_rewards)."""

    loss_type: str = setting("grpo", "TRL's loss aggregation: grpo, dapo, dr_grpo, bnpo, ...")
    scale_rewards: Literal["group", "batch", "none"] = setting(
        "group", "divide each advantage by the reward std of its group, of the whole batch, or by nothing")


@dataclass
class RLOOSection(OnlineRLSection):
    """RLOO: advantage = reward minus the mean of the other answers to the same prompt."""

    normalize_advantages: bool = setting(False, "scale the batch's advantages to mean 0 and std 1")
