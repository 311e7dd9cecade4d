"""The command line every stage shares: `python -m stages.<name> --config PRESET key.sub=value ...`.

`--help` lists the keys of the stage's sections with their defaults, ranges and help, read from the
schema alone: it answers before anything imports torch.
"""

from __future__ import annotations

import argparse
import os

from pipeline.config.fields import about, allowed, keys_of, sections_of, show_value
from pipeline.config.loader import load_config
from pipeline.config.schema import RunConfig
from pipeline.runtime.noise import quiet_weight_bars

# The sections each stage reads, for its --help (every stage also reads run).
_SECTIONS = {
    "data": ("run", "data"),
    "pretrain": ("run", "model", "tokenizer", "train", "data"),
    "sft": ("run", "sft"),
    "rank": ("run", "rank"),
    "reward": ("run", "reward"),
    "reward-stats": ("run", "reward", "ppo"),  # reward.stats_prompts and PPO's sampling settings
    "ppo": ("run", "ppo"),
    "align": ("run", "align", "dpo", "grpo", "rloo"),
    "eval": ("run", "eval"),
    "compare": ("run", "eval"),  # compare answers and scores with eval's settings
}
PROGRAMS = {"data": "python -m data.demo", "reward-stats": "python -m stages.reward.stats"}  # not stages.<name>
_WIDEST = 30  # a longer default or range (a list, many choices) pushes its own line's help along, not every line's


def help_sections(stage: str) -> tuple[str, ...]:
    """The config sections `stage` reads; a stage not listed gets every section."""
    return _SECTIONS.get(stage) or tuple(name for name, _ in sections_of(RunConfig))


def keys_help(sections: tuple[str, ...]) -> str:
    """The keys of `sections`, a block per section: name, default, range and help, one key a line."""
    classes = dict(sections_of(RunConfig))
    blocks = []
    for section in sections:
        keys = keys_of(classes[section], section + ".")
        rows = [(k.name, show_value(k.default), allowed(k), k.help) for k in keys]
        widths = [max(len(row[i]) if len(row[i]) <= _WIDEST else 0 for row in rows) for i in range(3)]
        lines = [f"{section}: {about(classes[section])}".rstrip(": ")]
        lines += ["  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + f"  {row[3]}" for row in rows]
        blocks.append("\n".join(lines))
    return ("config keys (set as section.key=value, or in the preset): name, default, allowed range, what it does\n\n"
            + "\n\n".join(blocks))


def stage_config(stage: str, argv=None, description: str = "", sections: tuple[str, ...] | None = None, *,
                 quiet: bool = True):
    """The config of a stage's command line (`argv`), or `argv` itself when it is a config already read
    (pipeline/chain/entry.py reads it once, to decide "up to date" before the stage imports torch)."""
    if isinstance(argv, RunConfig):
        quiet_weight_bars()
        return argv
    parser = argparse.ArgumentParser(
        prog=PROGRAMS.get(stage, f"python -m stages.{stage}"), description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: any config key as section.key=value, e.g. train.max_steps=200 model.n_layer=2\n\n"
               + keys_help(sections or help_sections(stage)),
    )
    parser.add_argument("--config", default=os.environ.get("CONFIG", "configs/tiny.yaml"),
                        help="preset YAML (default: configs/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if quiet:  # imports transformers: pipeline/chain/entry.py asks for it only once the stage has work to do
        quiet_weight_bars()
    return cfg
