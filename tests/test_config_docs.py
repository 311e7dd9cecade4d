"""A config a user can read: every key declares one line of help and its range, `--help` lists a stage's
keys, and docs/config.md is the schema's own output."""

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from pipeline.config.cli import help_sections, keys_help
from pipeline.config.docs import COMMAND, render
from pipeline.config.fields import keys_of, sections_of
from pipeline.config.schema import RunConfig

ROOT = Path(__file__).resolve().parents[1]
KEYS = keys_of(RunConfig)
HELP_LIMIT = 110  # one terminal line beside the key, its default and its range


def _numeric(tp) -> bool:
    args = typing.get_args(tp)
    return tp in (int, float) or any(_numeric(a) for a in args if a is not type(None))


def test_docs_config_md_is_what_the_schema_generates():
    written = (ROOT / "docs/config.md").read_text(encoding="utf-8")
    assert written == render(), f"docs/config.md is stale: regenerate it with `{COMMAND}`"


def test_every_key_has_one_line_of_help():
    missing = [k.name for k in KEYS if not k.help.strip()]
    long = [k.name for k in KEYS if "\n" in k.help or len(k.help) > HELP_LIMIT]
    assert missing == [], "give each key setting(default, 'what it does, in which unit')"
    assert long == [], f"help must fit one line of {HELP_LIMIT} characters"


def test_every_number_declares_its_range_and_only_numbers_do():
    """A number without a range takes any value; a range on a text key would silently check nothing."""
    seeds = {k.name for k in KEYS if k.name.endswith(".seed")}  # any integer seeds the generators
    unbounded = [k.name for k in KEYS if _numeric(k.type) and not k.range and k.name not in seeds]
    misplaced = [k.name for k in KEYS if k.range and not _numeric(k.type)]
    assert unbounded == [] and misplaced == []


def test_a_stage_help_lists_its_sections_keys_with_default_range_and_help_without_importing_torch():
    code = ("import sys\nfrom pipeline.config.cli import stage_config\n"
            "try:\n    stage_config('ppo', ['--help'], description='PPO')\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: python -m stages.ppo") and out.rstrip().endswith("no torch")
    kl_coef = next(k for k in KEYS if k.name == "ppo.kl_coef")
    line = next(line for line in out.splitlines() if line.strip().startswith("ppo.kl_coef "))
    assert line.split()[1:3] == ["0.05", ">="] and line.endswith(kl_coef.help)
    assert "run.seed" in out and "ppo.lora.r " in out  # the shared section, and nested keys
    assert "sft.lr" not in out  # another stage's section


@pytest.mark.parametrize("stage", ["data", "pretrain", "sft", "rank", "reward", "ppo", "align", "eval", "compare"])
def test_every_stage_help_names_real_sections_and_lists_all_their_keys(stage):
    sections = dict(sections_of(RunConfig))
    listing = keys_help(help_sections(stage))
    for section in help_sections(stage):
        assert all(f"  {k.name} " in listing for k in keys_of(sections[section], section + "."))
