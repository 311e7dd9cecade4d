"""Rounds of rank -> reward -> PPO: iterated RLHF, as InstructGPT and Llama 2 ran theirs.

Round 1 writes runs/<name>/rank, reward and ppo. Round N > 1 writes rank-rN, reward-rN and ppo-rN and
leaves the earlier rounds' artifacts as they are:

    rank-rN    round N-1's PPO model answers the labeling prompts again, and the labeler ranks them
               (the reward model then sees answers from where PPO went, which the SFT samples never show)
    reward-rN  a reward model trained, from the SFT model as in round 1, on reward.data plus every later
               round's rankings so far (demo+rank -> demo+rank+rank-r2 in round 2)
    ppo-rN     PPO from the SFT model (the KL leash stays on SFT) against reward-rN

`make ppo` runs rounds 1 .. run.rounds; a stage command belongs to round run.round (default 1, except
`make rank rank.policy=DIR`, which ranks another model's answers: round 2). Evaluation, compare, chat and
serve use the last round's PPO and reward models. Reads the config only.
"""

from __future__ import annotations

from pathlib import Path

LOOP_STAGES = ("rank", "reward", "ppo")


def artifact_name(stage: str, round_no: int) -> str:
    """ppo for round 1, ppo-r2 for round 2, ... (likewise rank and reward)."""
    return stage if round_no == 1 else f"{stage}-r{round_no}"


def current_round(cfg) -> int:
    """The round a rank/reward/ppo command belongs to."""
    return cfg.run.round or 1


def round_dir(cfg, stage: str, round_no: int | None = None) -> Path:
    """Where `stage` (rank, reward or ppo) of round `round_no` (default: this command's) lives."""
    return cfg.stage_dir(artifact_name(stage, round_no or current_round(cfg)))


def final_dir(cfg, stage: str) -> Path:
    """The last round's artifact of `stage`: what evaluation, compare, chat and serve read."""
    return round_dir(cfg, stage, max(cfg.run.rounds, current_round(cfg)))


def later_rounds(cfg) -> list[int]:
    """The rounds `make ppo` runs after this command's round."""
    return list(range(current_round(cfg) + 1, cfg.run.rounds + 1))


def with_later_rankings(parts: list[str], round_no: int) -> list[str]:
    """reward.data's parts for round `round_no`: the given ones plus rank-r2 .. rank-rN not yet named."""
    return parts + [artifact_name("rank", n) for n in range(2, round_no + 1) if artifact_name("rank", n) not in parts]
