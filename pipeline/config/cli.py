"""The command line every stage shares: `python -m stages.<name> --config PRESET key.sub=value ...`."""

from __future__ import annotations

import argparse
import os

from pipeline.config.loader import load_config
from pipeline.lm.loading import quiet_weight_bars


def stage_config(stage: str, argv: list[str] | None = None, description: str = ""):
    parser = argparse.ArgumentParser(
        prog=f"python -m stages.{stage}", description=description,
        epilog="Overrides: any config key as section.key=value, e.g. train.max_steps=200 model.n_layer=2",
    )
    parser.add_argument("--config", default=os.environ.get("CONFIG", "configs/tiny.yaml"),
                        help="preset YAML (default: configs/tiny.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    quiet_weight_bars()
    return cfg
