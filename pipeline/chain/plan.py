"""What make needs from the stage graph (pipeline/chain/table.py), for a config and its overrides, as one line of
words (make reads words, not JSON):

    stages:data,pretrain,...     every stage target
    ppo:sft,reward,reward-stats  the targets make runs before a target (a stage whose input the config
                                 names otherwise builds nothing first: ppo.policy=DIR -> no sft)
    run:dpo=L:stages.align:align.method=dpo   how to run it: L under $(LAUNCH), P plain python
    skip:pretrain                a target with no job in this config (`--why pretrain` says why)
    loop:rank,reward,reward-stats,ppo  later:2,3  rounds_after:ppo   run.rounds: `make ppo` then runs the
                                 loop's stages for rounds 2..N
    model:runs/tiny/ppo          what `make chat` and `make serve` talk to

Reads the config and manifests only (no torch): a fraction of a second per `make` call. When the config
cannot be read, the graph is printed without prerequisites, and the stage itself then says what is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.artifacts.store import is_complete
from pipeline.chain.table import LOOP, STAGES, demo_readers, make_needs
from pipeline.config.loader import load_config
from pipeline.errors import UserError
from pipeline.graph.rounds import current_round, later_rounds, newest_artifact


def run_word(name: str) -> str:
    s = STAGES[name]
    return f"run:{name}=" + ":".join(("L" if s.launch else "P", s.entry, *s.args))


def plan_words(cfg) -> str:
    words = [f"stages:{','.join(STAGES)}", *(run_word(n) for n in STAGES)]
    if cfg is None:
        return " ".join(words)
    words += [f"{t}:{','.join(deps)}" for t, deps in make_needs(cfg).items()]
    words += [f"skip:{n}" for n, s in STAGES.items() if s.skip and s.skip(cfg)]
    words += [f"loop:{','.join(LOOP)}", f"later:{','.join(map(str, later_rounds(cfg)))}", f"rounds_after:{LOOP[-1]}"]
    ppo = newest_artifact(cfg, "ppo")
    words.append(f"model:{ppo if is_complete(ppo) else cfg.stage_dir('sft')}")
    return " ".join(words)


def why(cfg, target: str) -> str:
    s = STAGES[target]
    reason = s.skip(cfg) if s.skip else None
    if reason:
        return reason
    deps = make_needs(cfg)[target]
    return f"{target}: runs ({target} needs: {', '.join(deps) or 'nothing'}; round {current_round(cfg)})"


def help_lines() -> str:
    return "\n".join(f"  make {n:<13} {s.about}" for n, s in STAGES.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.chain.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("CONFIG", "configs/tiny.yaml"))
    parser.add_argument("--why", choices=list(STAGES), help="say why TARGET is skipped (or that it runs)")
    parser.add_argument("--targets", action="store_true", help="list the stage targets with one line each")
    parser.add_argument("--demo-readers", action="store_true", help="the config keys that read the demo data")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.targets:
        print(help_lines())
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except UserError as e:
        print(f"plan: {e}", file=sys.stderr)
        if args.why:
            return 2
        print(plan_words(None))  # make still knows the targets; the stage reports the error
        return 0
    if args.why:
        print(why(cfg, args.why))
    elif args.demo_readers:
        print(" ".join(demo_readers(cfg)))
    else:
        print(plan_words(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
