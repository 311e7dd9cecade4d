"""How every stage starts: read the config once, and decide "up to date" before torch is imported.

`python -m stages.<name>` runs `start(name, load)`: a finished artifact whose key (pipeline/chain/table.py)
matches today's prints "up to date" and exits in a fraction of a second; otherwise `load()`, the stage's own
import of its `main` (torch, transformers), runs, and `main` gets the config already read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.chain.table import STAGES, is_up_to_date
from pipeline.config.cli import stage_config
from pipeline.errors import main_guard
from pipeline.runtime.processes import end_launch, launch_state, launched

ABOUT_ALIGN = "DPO, GRPO or RLOO (align.method) on TRL's trainers"


@main_guard
def run(stage: str, load: Callable, argv: list[str] | None = None) -> int:
    about = STAGES[stage].about if stage in STAGES else ABOUT_ALIGN
    cfg = stage_config(stage, argv, description=about, quiet=False)
    name = cfg.align.method if stage == "align" else stage
    if name in STAGES and is_up_to_date(cfg, name):
        return 0
    if not launched():
        return load()(cfg) or 0  # main's stage_config quiets the weight bars
    launch_state()  # the launch's process group, with the collective timeout, before the stage makes its own
    code = load()(cfg) or 0
    end_launch()
    return code


def start(stage: str, load: Callable) -> None:
    """The body of a stage's __main__.py: `load` imports and returns the stage's main."""
    sys.exit(run(stage, load, sys.argv[1:]))
