"""Rounds of rank -> reward -> PPO: iterated RLHF, as InstructGPT and Llama 2 ran theirs.

Round 1 writes runs/<name>/rank, reward and ppo. Round N > 1 writes rank-rN, reward-rN and ppo-rN and
leaves the earlier rounds' artifacts as they are:

    rank-rN    round N-1's PPO model answers the labeling prompts again, and the labeler ranks them
               (the reward model then sees answers from where PPO went, which the SFT samples never show)
    reward-rN  a reward model trained, from the SFT model as in round 1, on reward.data plus every later
               round's rankings so far (demo+rank -> demo+rank+rank-r2 in round 2)
    ppo-rN     PPO from the SFT model (the KL leash stays on SFT) against reward-rN

`make ppo` runs rounds 1 .. run.rounds; a stage command belongs to round run.round (default 1, except
with rank.policy=DIR, which ranks another model's answers: round 2). Evaluation, compare, chat and serve
use the PPO and reward models of the newest round up to run.rounds whose PPO model is finished.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError

LOOP_STAGES = ("rank", "reward", "reward-stats", "ppo")  # pipeline/chain/table.py declares them loop=True (a test checks)


def artifact_name(stage: str, round_no: int) -> str:
    """ppo for round 1, ppo-r2 for round 2, ... (likewise rank and reward)."""
    return stage if round_no == 1 else f"{stage}-r{round_no}"


def current_round(cfg) -> int:
    """The round a rank/reward/ppo command belongs to: run.round; unset, 1, or 2 when rank.policy names
    another model (ranking its answers is a later round: `make rank rank.policy=DIR` -> rank-r2)."""
    return cfg.run.round or (1 if cfg.rank.policy is None else 2)


def round_dir(cfg, stage: str, round_no: int | None = None) -> Path:
    """Where `stage` (rank, reward or ppo) of round `round_no` (default: this command's) lives."""
    return cfg.stage_dir(artifact_name(stage, round_no or current_round(cfg)))


def final_round(cfg) -> int:
    """The last round asked for: run.rounds (or run.round, when a command names a later one)."""
    return max(cfg.run.rounds, cfg.run.round or 1)


def last_finished_round(cfg) -> int:
    """The newest round up to run.rounds whose PPO model is finished (1 when none is): the round whose PPO
    and reward models evaluation, compare, chat and serve use."""
    from pipeline.artifacts.store import is_complete

    return next((n for n in range(final_round(cfg), 1, -1) if is_complete(round_dir(cfg, "ppo", n))), 1)


def newest_artifact(cfg, stage: str) -> Path:
    """This run's artifact of `stage`; for rank, reward and ppo, the newest finished round's (up to
    run.rounds): what evaluation, compare, chat and serve read."""
    return round_dir(cfg, stage, last_finished_round(cfg)) if stage in LOOP_STAGES else cfg.stage_dir(stage)


def make_command(stage: str, round_no: int) -> str:
    """The command that builds `stage` of round `round_no` (for error messages)."""
    if stage == "ppo" and round_no > 1:
        return f"make ppo run.rounds={round_no}"
    return f"make {stage}" + (f" run.round={round_no}" if round_no > 1 else "")


def later_rounds(cfg) -> list[int]:
    """The rounds `make ppo` runs after this command's round."""
    return list(range(current_round(cfg) + 1, cfg.run.rounds + 1))


def reward_parts(cfg) -> list[str]:
    """reward.data split at "+": demo, rank, rank-r2 or files (the reward stage checks the parts); in
    round N > 1 with this run's rankings in it, plus every later round's so far: rank-r2 .. rank-rN."""
    parts = [p.strip() for p in str(cfg.reward.data).split("+")]
    if "rank" in parts:
        parts += [artifact_name("rank", n) for n in range(2, current_round(cfg) + 1)
                  if artifact_name("rank", n) not in parts]
    return parts


def check_rounds(cfg) -> None:
    """Settings that cannot run the later rounds asked for (run.rounds, run.round), refused when the config
    is read: a later round trains on every round's rankings, and `make ppo` runs it with a reward model of its
    own on the previous round's PPO answers."""
    if final_round(cfg) == 1:
        return
    keys = f"run.rounds={cfg.run.rounds}" + (f" run.round={cfg.run.round}" if cfg.run.round else "")
    if "rank" not in reward_parts(cfg):
        raise UserError(f"{keys}: reward.data={cfg.reward.data!r} names no ranking of this run's answers; later "
                        "rounds train on every round's rankings: include rank (e.g. reward.data=demo+rank), or "
                        "set run.rounds=1.")
    if not later_rounds(cfg):
        return
    for key, value in (("ppo.reward_model", cfg.ppo.reward_model), ("rank.policy", cfg.rank.policy)):
        if value is not None:
            raise UserError(f"{keys}: {key}={value} would be used again in every later round, which ranks the "
                            f"previous round's PPO model and trains its own reward model; leave {key} unset to run "
                            "rounds, or set run.rounds=1.")
