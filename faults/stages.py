"""The stages the fault-injection suite drives, in chain order: one line per stage.

A stage runs as its declaration says (pipeline/chain/table.py: `python -m stages.<name>`); the ones before it in
this list (and the demo data) are its inputs. To add a stage, add its line here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # stages.<name> and runs/<preset>/<name>
    resume_flag: str  # the override that starts fresh instead of resuming
    change: str  # an override that changes the stage's key (a config change after a kill)
    diverge: str | None  # an override that makes training non-finite (None: the stage trains nothing)
    checkpoint: str  # glob (under <name>.partial/checkpoints) that exists once a checkpoint is complete
    tolerance: float = 0.0  # 0: a resumed run's metrics must equal an uninterrupted run's bit for bit
    disk_limit: int = 64 << 10  # the file-size limit (bytes) of the disk-full check: below what the stage writes
    kill: bool = True  # a target of the kill trials (False: a step of seconds that keeps no checkpoint)


STAGES = [
    Stage("pretrain", "train.resume", "train.lr=0.002", "train.lr=1e6", "latest.pt"),
    Stage("sft", "sft.resume", "sft.lr=0.0002", "sft.lr=1e30", "checkpoint-*/complete.json"),
    # rank trains nothing (no divergence to inject); its sampled chunks are its checkpoints.
    Stage("rank", "rank.resume", "rank.noise=0.2", None, "candidates-*.jsonl", disk_limit=2 << 10),
    Stage("reward", "reward.resume", "reward.lr=0.0002", "reward.lr=1e30", "checkpoint-*/complete.json"),
    # the reward statistics: seconds of sampling, nothing to resume; run in the chain, never killed
    Stage("reward-stats", "reward.resume", "ppo.temperature=0.9", None, "", kill=False),
    Stage("ppo", "ppo.resume", "ppo.kl_coef=0.05", "ppo.lr=1e6", "ckpt/trainer.pt"),
    # beside PPO on TRL's trainers (python -m stages.align align.method=...): DPO on the reward model's pairs,
    # GRPO and RLOO rewarded by the reward model with its statistics
    Stage("dpo", "dpo.resume", "dpo.beta=0.2", "dpo.lr=1e30", "checkpoint-*/complete.json"),
    Stage("grpo", "grpo.resume", "grpo.beta=0.3", "grpo.lr=1e30", "checkpoint-*/complete.json"),
    Stage("rloo", "rloo.resume", "rloo.beta=0.3", "rloo.lr=1e30", "checkpoint-*/complete.json"),
]
