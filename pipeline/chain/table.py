"""The stage graph: every stage of the pipeline declared once (pipeline/graph/declare.py says what a
declaration is and what is derived from it).

    data -> pretrain -> sft -> rank -> reward -> reward-stats -> ppo        (rank, reward, reward-stats
                          \\                 \\-> grpo, rloo                  and ppo repeat per round)
                           \\-> dpo                      eval, compare read whatever is finished

For each stage: the config values that decide its artifact (`config`), and its inputs (`inputs`): other
stages' artifacts, which make builds first unless a config key names another input, and data sources,
fingerprinted by content (both written in pipeline/chain/inputs.py). Keys that change how a run is carried out but not what it makes (NO_EFFECT)
are left out, so changing them never makes an artifact stale. This module reads only the config: no
torch, no model; `python -m pipeline.chain.plan` prints what make needs from it.
"""

from __future__ import annotations

from pipeline.chain.inputs import (
    COMPARE_READS,
    STATS_SAMPLING,
    align_config,
    compare_inputs,
    dpo_inputs,
    eval_inputs,
    judged_config,
    judged_inputs,
    online_inputs,
    ppo_inputs,
    pretrain_inputs,
    rank_config,
    rank_inputs,
    rank_labels,
    reward_aggregate,
    reward_inputs,
    section,
    seed_dtype,
    set_keys,
    sft_inputs,
    stats_inputs,
    with_demo,
)
from pipeline.graph.declare import Source, Stage, artifact_dir, needs, stage_key, up_to_date
from pipeline.graph.rounds import current_round


def _pretrain_skip(cfg) -> str | None:
    if cfg.sft.init_from is not None and cfg.eval.lm_data != "pretrain":
        return (f"pretrain: skipped: sft.init_from={cfg.sft.init_from} starts from an existing model, so no stage "
                "of this config reads a pretrained one (to pretrain anyway: python -m stages.pretrain --config ...)")
    return None


def _data_skip(cfg) -> str | None:
    readers = demo_readers(cfg)
    if not readers:
        return ("data: skipped: no stage of this config reads the demo data (every data key names a file or "
                "hub dataset; to build it anyway: python -m data.demo --config ...)")
    return None


def _data_config(cfg) -> dict:
    """The demo's settings (data.demo also checks its builder's code and the Python version itself)."""
    return {"data": section(cfg, "data", drop=("dir",))}


TRAINED = ("pretrain", "sft", "rank", "reward", "reward-stats", "ppo", "dpo", "grpo", "rloo")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", "build the embedded demo data (offline, seconds)", "data.demo", _data_config, lambda cfg: {},
          skip=_data_skip),
    Stage("pretrain", "tokenizer + GPT from scratch", "stages.pretrain",
          with_demo(lambda cfg: {"run": seed_dtype(cfg), "tokenizer": section(cfg, "tokenizer"),
                                  "model": section(cfg, "model"), "train": section(cfg, "train")}, pretrain_inputs),
          pretrain_inputs, launch=True, skip=_pretrain_skip),
    Stage("sft", "instruction tuning (TRL SFTTrainer)", "stages.sft",
          with_demo(lambda cfg: {"sft": section(cfg, "sft"), "run": seed_dtype(cfg)}, sft_inputs),
          sft_inputs, launch=True),
    Stage("rank", "the SFT model's own answers, ranked (rank.labeler=gold|human|judge; rank.feedback_from_round=N: "
          "round N on from feedback)", "stages.rank", with_demo(rank_config, rank_inputs),
          rank_inputs, launch=True, loop=True, extra=rank_labels,  # launched: the processes share the sampling
          finished=lambda m: (m.get("metrics") or {}).get("remaining", 0) == 0),
    Stage("reward", "reward model on rankings (TRL RewardTrainer)", "stages.reward",
          with_demo(lambda cfg: {"reward": section(cfg, "reward", ("stats_prompts",) + set_keys(cfg, "reward")),
                                  "run": seed_dtype(cfg)},
                     reward_inputs),
          reward_inputs, launch=True, loop=True),
    Stage("reward-stats", "the mean/std of the reward model's scores of the policy's answers (PPO's "
          "normalisation; seconds)", "stages.reward.stats",
          with_demo(lambda cfg: {"ppo": {**{k: getattr(cfg.ppo, k) for k in STATS_SAMPLING}, **reward_aggregate(cfg)},
                                  "reward": {"stats_prompts": cfg.reward.stats_prompts}, "run": seed_dtype(cfg)},
                     stats_inputs),
          stats_inputs, loop=True),
    Stage("ppo", "PPO with a KL leash to SFT (run.rounds=N: rounds 2..N -> ppo-rN)", "stages.ppo",
          judged_config(with_demo(lambda cfg: {"ppo": section(cfg, "ppo", set_keys(cfg, "ppo")), "run": seed_dtype(cfg)},
                                   ppo_inputs)),
          judged_inputs(ppo_inputs), launch=True, loop=True),
    Stage("dpo", "DPO (TRL DPOTrainer) on the pairs the reward model learns from (reward.data)", "stages.align",
          judged_config(align_config("dpo")),
          judged_inputs(dpo_inputs), args=("align.method=dpo",), launch=True),
    Stage("grpo", "GRPO (TRL GRPOTrainer), rewarded as PPO is, PPO's answer budget", "stages.align",
          judged_config(align_config("grpo")), judged_inputs(online_inputs("grpo")), args=("align.method=grpo",), launch=True),
    Stage("rloo", "RLOO (TRL RLOOTrainer), rewarded as PPO is, PPO's answer budget", "stages.align",
          judged_config(align_config("rloo")), judged_inputs(online_inputs("rloo")), args=("align.method=rloo",), launch=True),
    Stage("eval", "compare pretrain / SFT / PPO on held-out data (MODELS=dir ... to choose)", "stages.eval",
          judged_config(with_demo(lambda cfg: {"eval": section(cfg, "eval"), "ppo": {"kl_budget": cfg.ppo.kl_budget},
                                                "run": {"dtype": cfg.run.dtype}}, eval_inputs)),
          judged_inputs(eval_inputs), launch=True, after=True),  # launched: the processes share the answering
    Stage("compare", "SFT vs PPO, DPO, GRPO, RLOO (those that exist)", "stages.compare",
          judged_config(with_demo(lambda cfg: {"eval": {k: getattr(cfg.eval, k) for k in COMPARE_READS},
                                                "ppo": {"kl_budget": cfg.ppo.kl_budget}, "compare": section(cfg, "compare"),
                                                "run": {"dtype": cfg.run.dtype}}, compare_inputs)),
          judged_inputs(compare_inputs), launch=True, after=True),  # launched: the processes share the answering
)}
LOOP = tuple(name for name, s in STAGES.items() if s.loop)


def demo_readers(cfg) -> list[str]:
    """The config keys whose stage reads the embedded demo data (data's job), for stages that run."""
    keys = []
    for name, stage in STAGES.items():
        if name == "data" or (name == "pretrain" and _pretrain_skip(cfg)):
            continue
        keys += [i.key for i in stage.inputs(cfg).values() if isinstance(i, Source) and i.demo]
    return sorted(set(keys))


def inputs_of(cfg, name: str) -> dict:
    """A stage's declared inputs (the stages read what these name: one resolution for key and reading)."""
    return STAGES[name].inputs(cfg)


def key(cfg, name: str) -> dict:
    return stage_key(cfg, STAGES[name], STAGES)


def is_up_to_date(cfg, name: str, *, say: bool = True) -> bool:
    """The one up-to-date check every stage calls first: its finished artifact has today's key."""
    if not up_to_date(cfg, STAGES[name], STAGES):
        return False
    if say:
        print(f"{artifact_dir(cfg, STAGES[name])} is up to date (same config and inputs); nothing to do.")
    return True


def reward_stats(cfg, reward_record: dict | None = None) -> tuple[float, float, dict]:
    """(mean, std, the whole record) of the reward statistics, refused when they are not current.

    PPO (`reward_record` None) needs them measured with today's settings: its own sampling, policy and
    reward model. GRPO and RLOO are rewarded as PPO is, so they need them measured for the reward model
    they train against (`reward_record`, its fingerprint)."""
    import json

    from pipeline.artifacts.resume import changed_keys
    from pipeline.artifacts.store import read_manifest, require_artifact
    from pipeline.errors import UserError
    from pipeline.graph.rounds import make_command

    stats_dir = artifact_dir(cfg, STAGES["reward-stats"])
    command = make_command("reward-stats", current_round(cfg))
    require_artifact(stats_dir, command)
    have = (read_manifest(stats_dir) or {}).get("key") or {}
    if reward_record is None:
        changes = changed_keys(have, key(cfg, "reward-stats"))
        if changes:
            raise UserError(f"the reward statistics in {stats_dir} were measured with other settings "
                            f"({'; '.join(changes[:3])}): run `{command}` first (make ppo does).")
    else:
        measured = ((have.get("inputs") or {}).get("reward_model") or {})
        same = ("fingerprint", "hub")  # where a model lies does not matter, what it is does
        if {k: measured.get(k) for k in same} != {k: reward_record.get(k) for k in same}:
            raise UserError(f"the reward statistics in {stats_dir} were measured for another reward model than "
                            f"{reward_record.get('path') or reward_record.get('hub')}: run `{command} "
                            f"ppo.reward_model=...` with that model first.")
    stats = json.loads((stats_dir / "reward_stats.json").read_text())
    return float(stats["mean"]), float(stats["std"]) or 1.0, stats


def make_needs(cfg) -> dict[str, list[str]]:
    return needs(cfg, STAGES)
