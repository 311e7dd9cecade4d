"""Which stages a make target builds first, read from the config: a stage whose input is given does
not build the stage before it.

    sft.init_from set            -> `make sft` runs no pretraining (and `make pretrain` has no job)
    reward.init_from set         -> `make reward` needs no SFT model (its reward statistics sample
                                    ppo.policy when that is set, else the model it starts from)
    ppo.policy / ppo.reward_model -> `make ppo` builds no SFT / reward model
    rank.policy set              -> `make rank` builds no SFT model
    run.round N > 1              -> `make rank` builds nothing before it (it ranks round N-1's PPO model)
    run.rounds N > 1             -> `make ppo` runs rounds 2..N after round 1 (the word later:2,..,N)
    no stage reads "demo"        -> `make data` has no job

The Makefile reads one line of `target:prerequisite,...` words from `python -m pipeline.graph.plan
--config PRESET overrides...` (plus `skip:target` for a target with no job in this config), and a
skipped target runs `python -m pipeline.graph.plan --why target ...`, which says why; `--model` prints the
model `make chat` and `make serve` talk to. Reads the config (and, for --model, which PPO artifacts are
finished): no torch, so it costs a fraction of a second per `make` call.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.config.loader import load_config
from pipeline.graph.rounds import current_round, later_rounds, newest_artifact, reward_parts

TARGETS = ("data", "pretrain", "sft", "rank", "reward", "ppo", "dpo", "grpo", "rloo")


def _is_demo(value) -> bool:
    return value in (None, "", "demo")


def demo_readers(cfg) -> list[str]:
    """The config keys that make a stage read the embedded demo data."""
    keys = []
    if "demo" in cfg.train.data and pretrain_used(cfg):
        keys.append("train.data")
    if cfg.sft.data == "demo" or cfg.sft.val_data == "demo":
        keys.append("sft.data")
    if cfg.rank.prompts == "demo" or cfg.rank.heldout_prompts == "demo":
        keys.append("rank.prompts")
    if "demo" in reward_parts(cfg):
        keys.append("reward.data")
    if cfg.ppo.data == "demo":
        keys.append("ppo.data")  # also the prompts of the reward statistics
    if _is_demo(cfg.eval.prompts) or cfg.eval.lm_data == "demo":
        keys.append("eval.prompts/lm_data")
    keys += [f"{m}.data" for m in ("grpo", "rloo") if getattr(cfg, m).data == "demo"]
    return keys


def pretrain_used(cfg) -> bool:
    """Pretraining has a job unless SFT starts from an existing model and evaluation reads no pretraining split."""
    return cfg.sft.init_from is None or cfg.eval.lm_data == "pretrain"


def needs(cfg) -> dict[str, list[str]]:
    """{target: the targets make runs before it}. The order is the chain's, so the commands of
    `make pretrain sft rank reward ppo` stay data, pretrain, sft, rank, reward, ppo."""
    demo = {key.split(".")[0] for key in demo_readers(cfg)}
    out = {
        "data": [],
        "pretrain": ["data"] if "train" in demo else [],
        "sft": (["pretrain"] if cfg.sft.init_from is None else []) + (["data"] if "sft" in demo else []),
        # round N > 1 ranks round N-1's PPO model: made by `make ppo run.rounds=N-1`, not a prerequisite here
        "rank": (["sft"] if cfg.rank.policy is None and current_round(cfg) == 1 else [])
                + (["data"] if "rank" in demo else []),
        "reward": ((["sft"] if cfg.reward.init_from is None else [])
                   + (["rank"] if "rank" in reward_parts(cfg) else [])
                   + (["data"] if demo & {"reward", "ppo"} else [])),
        "ppo": ((["sft"] if cfg.ppo.policy is None else []) + (["reward"] if cfg.ppo.reward_model is None else [])
                + (["data"] if "ppo" in demo else [])),
        "dpo": ["sft"] if cfg.dpo.policy is None else [],
    }
    for method in ("grpo", "rloo"):
        s = getattr(cfg, method)
        out[method] = (["sft"] if s.policy is None else []) + (["reward"] if s.reward_model is None else [])
    return out


def skip_reason(cfg, target: str) -> str | None:
    """Why `target` has no job in this config (None: it runs)."""
    if target == "pretrain" and not pretrain_used(cfg):
        return (f"pretrain: skipped: sft.init_from={cfg.sft.init_from} starts from an existing model, so no stage "
                "of this config reads a pretrained one (to pretrain anyway: python -m stages.pretrain --config ...)")
    if target == "data" and not demo_readers(cfg):
        return ("data: skipped: no stage of this config reads the demo data (every data key names a file or "
                "hub dataset; to build it anyway: python -m data.demo --config ...)")
    return None


def plan_words(cfg) -> str:
    words = [f"{t}:{','.join(deps)}" for t, deps in needs(cfg).items()]
    words.append(f"later:{','.join(map(str, later_rounds(cfg)))}")  # the rounds `make ppo` runs after its own
    words += [f"skip:{t}" for t in TARGETS if skip_reason(cfg, t)]
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.graph.plan",
                                     description="The make prerequisites of each stage target for a config.")
    parser.add_argument("--config", default=os.environ.get("CONFIG", "configs/tiny.yaml"))
    parser.add_argument("--why", choices=TARGETS, help="say why TARGET is skipped (or that it runs)")
    parser.add_argument("--model", action="store_true", help="print the model chat and serve talk to: the PPO "
                        "model of the newest finished round up to run.rounds, else the SFT model")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except Exception as e:  # the Makefile falls back to the full chain; the stage then says what is wrong
        print(f"plan: {e}", file=sys.stderr)
        return 2
    if args.model:
        from pipeline.artifacts.store import is_complete

        ppo = newest_artifact(cfg, "ppo")
        print(ppo if is_complete(ppo) else cfg.stage_dir("sft"))
    elif args.why:
        print(skip_reason(cfg, args.why) or f"{args.why}: runs ({args.why} needs: "
              f"{', '.join(needs(cfg)[args.why]) or 'nothing'})")
    else:
        print(plan_words(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
