"""How every stage starts: read the config once, and decide "up to date" before torch is imported.

`python -m stages.<name>` runs `run(...)`: a finished artifact whose key (stages/graph.py) matches today's
prints "up to date" and exits in a fraction of a second; otherwise the stage's module is imported (torch,
transformers) and its `main` gets the config already read.
"""

from __future__ import annotations

import importlib
import sys

from pipeline.config.cli import stage_config
from pipeline.errors import main_guard
from stages.graph import STAGES, is_up_to_date

ABOUT_ALIGN = "DPO, GRPO or RLOO (align.method) on TRL's trainers"


@main_guard
def run(stage: str, module: str, argv: list[str] | None = None) -> int:
    about = STAGES[stage].about if stage in STAGES else ABOUT_ALIGN
    cfg = stage_config(stage, argv, description=about, quiet=False)
    name = cfg.align.method if stage == "align" else stage
    if name in STAGES and is_up_to_date(cfg, name):
        return 0
    return importlib.import_module(module).main(cfg) or 0  # main's stage_config quiets the weight bars


def start(stage: str, module: str) -> None:
    """The body of a stage's __main__.py."""
    sys.exit(run(stage, module, sys.argv[1:]))
