"""What each stage reads and which config values decide its artifact: the functions the stage table
(pipeline/chain/table.py) is declared with. Data sources are resolved here once; the stages read what these
name (one resolution for the key and for reading). Reads only the config: no torch, no model.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config.loader import to_dict
from pipeline.config.schema_rl import parse_gold
from pipeline.graph.declare import Artifact, Source
from pipeline.graph.rounds import LOOP_STAGES, current_round, reward_parts

# How a run is carried out, not what it makes: never part of a key (memory, logging, checkpoint cadence).
NO_EFFECT = ("resume", "log_every", "save_every", "checkpoint_every", "gradient_checkpointing", "check_memory")
# Where and how a person labels does not change what the labels are.
RANK_NO_EFFECT = ("ui", "host", "port")
# The settings of PPO's sampling that the reward statistics are measured with (PPO normalises its rewards by them).
STATS_SAMPLING = ("data", "temperature", "top_k", "top_p", "max_new_tokens", "max_prompt_length",
                  "forward_batch_size")
RANK_PART = re.compile(r"rank(-r[0-9]+)?")
# The eval settings compare answers and scores with (it computes no language-model metrics).
COMPARE_READS = ("prompts", "num_prompts", "temperature", "top_k", "top_p", "max_new_tokens", "seed", "batch_size",
                 "length_tolerance", "reward_model")


def section(cfg, name: str, drop: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in to_dict(getattr(cfg, name)).items() if k not in NO_EFFECT + drop}


# Keys whose default is what every artifact made before them did: left out of a key while at the default, so
# those artifacts stay current (reward.ensemble=1 trains the same model; the mean of one model is the model).
UNTIL_SET = {"reward": {"ensemble": 1}, "ppo": {"reward_aggregate": "mean", "reward_uncertainty_coef": 1.0}}


def set_keys(cfg, name: str) -> tuple[str, ...]:
    """UNTIL_SET keys of section `name` at their default (dropped from a key)."""
    return tuple(k for k, v in UNTIL_SET.get(name, {}).items() if getattr(getattr(cfg, name), k) == v)


def reward_aggregate(cfg) -> dict:
    """ppo's reward-ensemble settings that differ from the default (the statistics, PPO, GRPO and RLOO read them)."""
    return {k: getattr(cfg.ppo, k) for k in UNTIL_SET["ppo"] if k not in set_keys(cfg, "ppo")}


def is_demo(value) -> bool:
    return value in (None, "", "demo")


def demo(cfg, value, file: str, key: str) -> Source:
    """`value` as a data source: the demo's `file` when it says "demo" (or is empty)."""
    if is_demo(value):
        return Source(str(cfg.data_dir / file), key, demo=True)
    return Source(str(value), key)


def demo_section(cfg, inputs: dict) -> dict:
    """The data section, when a stage reads the demo (its values decide the demo's content)."""
    return {"data": section(cfg, "data", drop=("dir",))} if any(
        isinstance(i, Source) and i.demo for i in inputs.values()) else {}


def seed_dtype(cfg) -> dict:
    return {"seed": cfg.run.seed, "dtype": cfg.run.dtype}


# --- data sources, resolved once (the stages read what these name) -----------------------------------

def pretrain_inputs(cfg) -> dict:
    out = {}
    for n, source in enumerate(cfg.train.data):
        if source == "demo":  # as data.demo.pretrain_sources reads it (an empty entry is refused there)
            out["demo_train"] = demo(cfg, source, "pretrain_train.jsonl", "train.data")
            out["demo_val"] = demo(cfg, source, "pretrain_val.jsonl", "train.data")
        else:
            out[f"data{n}"] = Source(str(source), "train.data")
    if cfg.tokenizer.from_:
        out["tokenizer"] = Source(str(cfg.tokenizer.from_), "tokenizer.from")
    return out


def sft_inputs(cfg) -> dict:
    s = cfg.sft
    out = {"model": Artifact("pretrain", "sft.init_from"), "train": demo(cfg, s.data, "sft_train.jsonl", "sft.data")}
    if s.val_data:
        out["val"] = Source(str(s.val_data), "sft.val_data")
    elif is_demo(s.data):
        out["val"] = demo(cfg, None, "sft_val.jsonl", "sft.data")
    return out


def from_feedback(cfg, round_no: int | None = None) -> bool:
    """Whether a round (default: this command's) takes its rankings from the feedback store
    (rank.feedback_from_round) rather than sampling answers for rank.labeler."""
    first = cfg.rank.feedback_from_round
    return first is not None and (round_no or current_round(cfg)) >= first


def feedback_store(cfg) -> Path:
    """What people ranked in make serve / make chat of this run's models (data/feedback.py's store)."""
    return cfg.run_dir / "feedback"


def rank_config(cfg) -> dict:
    """A round from feedback is decided by the store's content and the model it ranks (its inputs) alone;
    feedback_from_round itself is in no key, so naming a later round leaves the earlier ones current."""
    if from_feedback(cfg):
        return {"rank": {"labeler": "feedback"}}
    return {"rank": section(cfg, "rank", RANK_NO_EFFECT + ("feedback_from_round",)), "run": {"seed": cfg.run.seed}}


def rank_inputs(cfg) -> dict:
    r = cfg.rank
    first = current_round(cfg) == 1
    policy = Artifact("sft", "rank.policy") if first else Artifact("ppo", "rank.policy", round_offset=-1)
    if from_feedback(cfg):  # the store's rankings of that model's answers; new feedback makes the round stale
        return {"policy": policy, "feedback": Source(str(feedback_store(cfg)), "rank.feedback_from_round")}
    out = {"policy": policy,
           "prompts": demo(cfg, r.prompts, "rank_prompts.jsonl", "rank.prompts"),
           "heldout": None if r.heldout_prompts == "none"
           else demo(cfg, r.heldout_prompts, "rank_heldout_prompts.jsonl", "rank.heldout_prompts")}
    if r.labeler == "judge":
        out["judge"] = Artifact("reward", "rank.judge")
    return out


def rank_labels(cfg) -> dict:
    """The labels people wrote (rank.labeler=human): they decide the artifact."""
    from pipeline.artifacts.store import fingerprint

    if cfg.rank.labeler != "human" or from_feedback(cfg):
        return {}
    d = labels_dir(cfg)
    return {"labels": fingerprint(d) if d.is_dir() else None}


def labels_dir(cfg, round_no: int | None = None):
    """Where people's labels of a round live: runs/<name>/labels (labels-rN), never deleted by make clean."""
    n = round_no or current_round(cfg)
    return cfg.run_dir / ("labels" if n == 1 else f"labels-r{n}")


def rank_part(name: str) -> Artifact:
    """rank, rank-r2, ...: a rank artifact of a given round, read by the reward stage and DPO."""
    return Artifact("rank", round_offset=0, round_no=int(name.rsplit("-r", 1)[-1]) if "-r" in name else 1)


def reward_data_inputs(cfg, prefix: str = "") -> dict:
    """reward.data's parts (demo+rank by default): the demo's rankings, this run's rank artifacts, the feedback
    people gave (its folder is fingerprinted: new feedback makes the reward model stale), files; and the
    held-out rankings the reward stage reports on."""
    out = {}
    parts = reward_parts(cfg)
    for n, part in enumerate(parts):
        if part == "demo":
            out[f"{prefix}demo"] = demo(cfg, "demo", "rankings_train.jsonl", "reward.data")
        elif RANK_PART.fullmatch(part):
            out[f"{prefix}{part}"] = rank_part(part)
        elif part == "feedback":  # what people ranked in make serve / make chat: data/feedback.py's store
            out[f"{prefix}feedback"] = Source(str(feedback_store(cfg)), "reward.data")
        else:
            out[f"{prefix}data{n}"] = Source(part, "reward.data")
    if cfg.reward.val_data:
        out[f"{prefix}heldout"] = Source(str(cfg.reward.val_data), "reward.val_data")
    elif "demo" in parts:
        out[f"{prefix}heldout"] = demo(cfg, "demo", "rankings_heldout.jsonl", "reward.data")
    return out


def reward_inputs(cfg) -> dict:
    out = {"init": Artifact("sft", "reward.init_from"), **reward_data_inputs(cfg)}
    if not any(RANK_PART.fullmatch(p) for p in reward_parts(cfg)):  # own answers measured on round 1's ranking
        out["own_answers"] = Artifact("rank", round_no=1, optional=True)
    return out


def stats_inputs(cfg) -> dict:
    p = cfg.ppo
    return {"reward_model": Artifact("reward", "ppo.reward_model"), "policy": Artifact("sft", "ppo.policy"),
            "prompts": demo(cfg, p.data, "ppo_prompts.jsonl", "ppo.data")}


def ppo_inputs(cfg) -> dict:
    p = cfg.ppo
    dev = (Source(str(p.eval_data), "ppo.eval_data") if p.eval_data
           else demo(cfg, None, "ppo_dev.jsonl", "ppo.data") if is_demo(p.data) else None)
    return {"policy": Artifact("sft", "ppo.policy"), "reward_model": Artifact("reward", "ppo.reward_model"),
            "reward_stats": Artifact("reward-stats"), "prompts": demo(cfg, p.data, "ppo_prompts.jsonl", "ppo.data"),
            "dev_prompts": dev}


def dev_prompts(cfg) -> Source | None:
    """The development prompts the DPO/GRPO/RLOO reports are judged on: PPO's (ppo.eval_data, or the demo's
    ppo_dev); None when there are none (PPO then holds out the last prompts of ppo.data for its own report)."""
    return ppo_inputs(cfg)["dev_prompts"]


def dpo_inputs(cfg) -> dict:
    d = cfg.dpo
    out = {"policy": Artifact("sft", "dpo.policy")}
    if d.data == "reward":  # the pairs the reward model learns from
        out.update({k: v for k, v in reward_data_inputs(cfg, "pairs_").items() if not k.endswith("heldout")})
    else:
        out["pairs"] = Source(str(d.data), "dpo.data")
    if d.val_data == "reward":
        held = reward_data_inputs(cfg, "pairs_").get("pairs_heldout")
        if held:
            out["heldout"] = held
    elif d.val_data:
        out["heldout"] = Source(str(d.val_data), "dpo.val_data")
    out["dev_prompts"] = dev_prompts(cfg)
    return out


def online_inputs(method: str):
    def inputs(cfg) -> dict:
        s = getattr(cfg, method)
        return {"policy": Artifact("sft", f"{method}.policy"), "reward_model": Artifact("reward", f"{method}.reward_model"),
                "reward_stats": Artifact("reward-stats"), "prompts": demo(cfg, s.data, "ppo_prompts.jsonl", f"{method}.data"),
                "dev_prompts": dev_prompts(cfg)}
    return inputs


def align_config(method: str):
    def config(cfg) -> dict:
        s = getattr(cfg, method)
        out = {method: section(cfg, method), "run": seed_dtype(cfg), "ppo": {"kl_budget": cfg.ppo.kl_budget}}
        if method != "dpo":  # rewarded as PPO is, with PPO's answer budget unless it sets its own
            out["ppo"].update({k: getattr(cfg.ppo, k) for k in ("missing_eos_penalty", "missing_eos_mode",
                                                                "reward_clip", "forward_batch_size")})
            out["ppo"].update(reward_aggregate(cfg))
            if s.total_episodes is None:
                out["ppo"]["total_episodes"] = cfg.ppo.total_episodes
        inputs = (dpo_inputs if method == "dpo" else online_inputs(method))(cfg)
        return {**out, **demo_section(cfg, inputs)}
    return config


def with_demo(config, inputs):
    return lambda cfg: {**config(cfg), **demo_section(cfg, inputs(cfg))}


def judged_config(config):
    """A stage whose report has gold numbers is keyed on judge.gold, except for the demo's metric (the
    default adds nothing, so artifacts made before the key existed stay current)."""
    def with_judge(cfg) -> dict:
        out = config(cfg)
        return {**out, "judge": {"gold": cfg.judge.gold}} if parse_gold(cfg.judge.gold)[1] else out
    return with_judge


def judged_inputs(inputs):
    """... and reads what judge.gold names: a reward model or judge LM recorded by its manifest, a rankings
    file by its content."""
    def with_judge(cfg) -> dict:
        kind, path = parse_gold(cfg.judge.gold)
        out = dict(inputs(cfg))
        if path:
            out["gold"] = (Source(path, "judge.gold") if kind == "rankings"
                           else Artifact("reward" if kind == "reward" else "sft", "judge.gold", value=path))
        return out
    return with_judge


def eval_inputs(cfg) -> dict:
    e = cfg.eval
    out = {"prompts": None if e.prompts == "none" else demo(cfg, e.prompts, "eval_prompts.jsonl", "eval.prompts")}
    if e.models:  # a name of this run's models (sft, ppo, ...) means its artifact, anything else a directory
        out.update({f"model{n}": run_model(m) if m in EVAL_RUN_MODELS and not Path(m).exists()
                    else Artifact("sft", "eval.models", value=str(m)) for n, m in enumerate(e.models)})
    else:
        out.update({m: run_model(m) for m in EVAL_RUN_MODELS})
    out["reward_model"] = Artifact("reward", "eval.reward_model", round_no="newest", optional=True)
    out.update({f"curves_{s}": run_model(s) for s in ("pretrain", "sft", "reward", "ppo")})  # the report's curves
    if e.lm_data == "pretrain":  # the documents pretraining held out of train.data
        out.update({f"lm_{k}": v for k, v in pretrain_inputs(cfg).items() if k != "tokenizer"})
    elif e.lm_data not in (None, "", "none"):
        out["lm_data"] = demo(cfg, e.lm_data, "pretrain_val.jsonl", "eval.lm_data")
    return out


EVAL_RUN_MODELS = ("pretrain", "sft", "ppo")  # what eval compares by default, those that exist


def run_model(name: str) -> Artifact:
    """This run's model `name` as eval reads it: whatever exists, PPO's of the newest finished round."""
    return Artifact(name, round_no="newest" if name in LOOP_STAGES else None, optional=True)


def compare_inputs(cfg) -> dict:
    out = {"sft": Artifact("sft"), "prompts": demo(cfg, cfg.eval.prompts, "eval_prompts.jsonl", "eval.prompts"),
           "reward_model": Artifact("reward", "eval.reward_model", round_no="newest", optional=True)}
    for m in ("ppo", "dpo", "grpo", "rloo"):
        out[m] = Artifact(m, round_no="newest" if m == "ppo" else None, optional=True)
    return out
