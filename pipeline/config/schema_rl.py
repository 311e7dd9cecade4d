"""The config sections of PPO and of the evaluation that judges it, kept apart from pipeline/config/schema.py
so each file stays a readable length; RunConfig there holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.fields import setting
from pipeline.config.schema_lora import LoraSection
from pipeline.errors import UserError


@dataclass
class PPOSection:
    """PPO: the SFT policy optimised against the reward model, with a KL leash to the SFT model."""

    policy: str | None = setting(None, "the model PPO trains, also the frozen reference; null: runs/<name>/sft")
    reward_model: str | None = setting(None, "the reward model that scores answers; null: this round's "
                                       "runs/<name>/reward")
    value_model: str | None = setting(None, "where the value model starts; null: from the reward model")
    data: str = setting("demo", "training prompts: demo, or a file or hub name with a prompt field (text or "
                        "messages)")
    eval_data: str | None = setting(None, "development prompts (+ gold) the stage reports on; null: the demo's "
                                    "ppo_dev, or data's last prompts")
    num_eval_prompts: int = setting(64, "development prompts answered into samples.md (RM and gold scores) while "
                                    "training", range=">= 0")
    report_prompts: int | None = setting(None, "development prompts of the final PPO-vs-SFT report; null: all",
                                         range="> 0")
    report_samples: int = setting(2, "answers per prompt and model in that report (its intervals count prompts)",
                                  range="> 0")
    total_episodes: int = setting(2048, "answers sampled over the whole run", range="> 0")
    batch_size: int = setting(64, "prompts per rollout, over all processes", range="> 0")
    num_minibatches: int = setting(4, "minibatches each rollout is split into for the updates", range="> 0")
    ppo_epochs: int = setting(4, "optimisation passes over each rollout", range="> 0")
    grad_accum: int = setting(1, "micro-batches per minibatch", range="> 0")
    lr: float = setting(3e-5, "learning rate of policy and value, decayed linearly to 0 over the run", range="> 0")
    max_new_tokens: int = setting(48, "answer length limit, in tokens", range="> 0")
    max_prompt_length: int = setting(128, "prompt length limit in tokens; longer prompts are dropped and counted",
                                     range="> 0")
    temperature: float = setting(0.7, "sampling temperature of the rollouts", range="> 0")
    top_k: int = setting(0, "sample only from the k likeliest tokens; 0: no limit", range=">= 0")
    top_p: float = setting(1.0, "sample only from the likeliest tokens holding this much probability; 1: all",
                           range="(0, 1]")
    kl_coef: float = setting(0.05, "weight of the per-token KL penalty to the reference (the start value with "
                             "adaptive_kl)", range=">= 0")
    kl_estimator: Literal["k1", "k3"] = setting("k1", "per-token KL estimate: k1 the log ratio (noisy), k3 never "
                                                "negative (less variance)")
    adaptive_kl: bool = setting(False, "move kl_coef towards target_kl as training goes (Ziegler et al. 2019)")
    target_kl: float = setting(6.0, "adaptive_kl: the KL per answer that kl_coef is moved towards", range="> 0")
    kl_horizon: int = setting(10000, "adaptive_kl: episodes over which kl_coef moves by at most ~20%",
                              range="> 0")
    kl_budget: float = setting(10.0, "the quality bar's limit on the mean KL(PPO || SFT) per answer", range=">= 0")
    gamma: float = setting(1.0, "discount of later rewards in the advantages; 1: none", range="[0, 1]")
    lam: float = setting(0.95, "GAE lambda: lower trusts the value model more (less variance, more bias)",
                         range="[0, 1]")
    cliprange: float = setting(0.2, "how far the policy's probability ratio may move in one update (PPO's clip)",
                               range="> 0")
    cliprange_value: float = setting(0.2, "how far the value may move from its rollout-time prediction",
                                     range="> 0")
    vf_coef: float = setting(0.1, "weight of the value loss beside the policy loss", range=">= 0")
    whiten_rewards: bool = setting(False, "scale each rollout's per-token rewards to unit std before the "
                                   "advantages")
    missing_eos_penalty: float | None = setting(1.0, "penalty for an answer cut off before its end of turn; null: "
                                                "none", range=">= 0")
    missing_eos_mode: Literal["subtract", "replace"] = setting("subtract", "subtract: score minus the penalty; "
                                                               "replace: minus the penalty alone")
    reward_clip: float | None = setting(None, "clip normalised scores to [-reward_clip, reward_clip]; null: no "
                                        "clipping", range="> 0")
    reward_aggregate: Literal["mean", "min", "mean_minus_std"] = setting(
        "mean", "a reward ensemble's score (reward.ensemble > 1): mean, min, or mean - coef x std over members")
    reward_uncertainty_coef: float = setting(1.0, "lambda of reward_aggregate=mean_minus_std (Coste et al. 2023)",
                                             range=">= 0")
    max_grad_norm: float = setting(1.0, "gradients are scaled down to at most this global norm", range="> 0")
    forward_batch_size: int = setting(32, "sequences per no-grad forward (reference, reward, value)", range="> 0")
    generation_batch_size: int | None = setting(None, "prompts sampled together; null: the whole rollout batch",
                                                range="> 0")
    sample_every: int = setting(5, "rollouts between development evaluations (the over-optimisation curve) and "
                                "samples.md entries", range="> 0")
    keep: Literal["last", "best"] = setting("last", "the policy committed: the last update's, or the development "
                                            "evaluation's with the best gold (ties: lower KL)")
    early_stop_patience: int = setting(0, "stop after this many development evaluations without a better "
                                       "gold; 0: never", range=">= 0")
    log_every: int = setting(1, "rollouts between logged metrics", range="> 0")
    save_every: int = setting(10, "rollouts between checkpoints (what a killed run resumes from)", range="> 0")
    resume: bool = setting(True, "continue an unfinished run made with the same settings from its last checkpoint")
    lora: LoraSection = field(default_factory=LoraSection)
    lora_value: Literal["head", "base_head", "model"] = setting(
        "head", "with LoRA, the value model: a head on the policy (shared base), on the base alone, or a full model")
    gradient_checkpointing: bool = setting(False, "recompute each layer in the backward: less memory, ~30% more "
                                           "time")
    check_memory: bool = setting(True, "refuse before loading when the memory estimate exceeds the device's free "
                                 "memory")


@dataclass
class EvalSection:
    """Compare models on held-out data; the last model listed is compared against the others."""

    models: list[str] = setting([], "models compared, the last against the others; []: this run's pretrain, sft "
                                "and ppo that exist")
    reward_model: str | None = setting(None, "the reward model that scores answers; null: runs/<name>/reward if it "
                                       "exists; none: skip")
    prompts: str | None = setting(None, "prompts with gold answers; null: the demo's evaluation prompts; none: no "
                                  "answers")
    lm_data: str = setting("demo", "held-out text for loss and bits per byte: demo, a file, none, or pretrain "
                           "(train.data's held-out)")
    lm_max_tokens: int = setting(32768, "held-out tokens scored per model", range="> 0")
    num_prompts: int = setting(128, "evaluation prompts answered per model (the first N)", range="> 0")
    max_new_tokens: int = setting(64, "answer length limit, in tokens", range="> 0")
    temperature: float = setting(0.7, "sampling temperature of the answers, and of the KL estimate (as in PPO)",
                                 range=">= 0")
    top_k: int = setting(0, "sample only from the k likeliest tokens; 0: no limit", range=">= 0")
    top_p: float = setting(1.0, "sample only from the likeliest tokens holding this much probability; 1: all",
                           range="(0, 1]")
    batch_size: int = setting(32, "prompts answered together (a quarter as many texts for the held-out loss)",
                              range="> 0")
    num_side_by_side: int = setting(10, "prompts whose answers the report shows side by side", range=">= 0")
    length_tolerance: float = setting(0.2, "'matched length': answers within this share of each other's word "
                                      "count", range=">= 0")
    seed: int = setting(0, "random seed of the evaluation's sampling")


@dataclass
class CompareSection:
    """`make compare`: SFT against every finished method, and against the methods that need no training."""

    best_of_n: int = setting(4, "best of n beside the methods: n SFT answers per prompt, the reward model's "
                             "choice; 0: off", range=">= 0")


GOLD_KINDS = ("demo", "reward", "rankings", "model")


def parse_gold(value) -> tuple[str, str | None]:
    """`judge.gold` as (kind, path): demo | reward:<dir> | rankings:<file> | model:<dir>; one line if not."""
    text = str(value or "").strip()
    kind, sep, path = text.partition(":")
    if text == "demo":
        return "demo", None
    if sep and kind in GOLD_KINDS[1:] and path.strip():
        return kind, path.strip()
    raise UserError(f"judge.gold={value!r}: give demo, reward:<reward model dir>, rankings:<held-out rankings "
                    "file> or model:<causal LM dir>.")


@dataclass
class JudgeSection:
    """The held-out judge ("gold") behind every report's gold numbers (PPO, DPO/GRPO/RLOO, eval, compare):
    docs/judges.md says what each kind measures."""

    gold: str = setting("demo", "demo (the demo's gold metric), reward:DIR (a 2nd reward model), rankings:FILE or "
                        "model:DIR (an LM)")

    def validate(self) -> None:
        parse_gold(self.gold)
