"""The prompts a report answers: one rule (`report_prompts`) for PPO's development report, the DPO/GRPO/RLOO
report, eval and compare. Each reads the file the stage graph declares for it (pipeline/chain/table.py), so a
report answers exactly the prompts its artifact's key fingerprints."""

from __future__ import annotations

from dataclasses import dataclass

from data.demo import input_path
from pipeline.chain.table import STAGES

DEVELOPMENT, TEST = "development", "test"
TRAINING_REPORTS = ("ppo", "dpo", "grpo", "rloo")


@dataclass(frozen=True)
class ReportPrompts:
    prompts: list  # one entry per answer: the chosen prompts (chat messages), the whole list `samples` times
    golds: list  # the gold answer of each entry (None where the file has none)
    source: str  # where they came from, or why there are none
    split: str
    samples: int

    @property
    def distinct(self) -> int:
        return len(self.prompts) // self.samples


def report_prompts(cfg, report: str, development: tuple[list[dict], str] | None = None) -> ReportPrompts:
    """The prompts of `report` (ppo, dpo, grpo, rloo, eval or compare). The rule:

    - Split. A stage that trains a policy (PPO, DPO, GRPO, RLOO) reports on the development prompts
      (ppo.eval_data, else the demo's ppo_dev.jsonl): no stage trains on them, and tuning may look at
      them. Eval and compare report on the test prompts (eval.prompts, else the demo's eval_prompts),
      which nothing is tuned on: the numbers to quote. Tuning on the prompts one quotes would flatter them.
      All training stages share one development split, so their reports are comparable.
    - How many. The first N prompts of the split, in file order (N: ppo.report_prompts, None for all;
      <method>.report_prompts; eval.num_prompts): the same prompts in every run and every stage, and a
      smaller report is a prefix of a larger one.
    - Answers per prompt. PPO answers each ppo.report_samples times (its report is read for tuning, so it
      buys precision with samples); the others once. The list is the chosen prompts repeated whole, so its
      first pass is the one-answer report, and every interval counts prompts, not answers.

    `development`: the development split already read (PPO reads it with its training prompts, and holds
    out the tail of ppo.data when no file names one)."""
    if report in TRAINING_REPORTS:
        records, source = development or _development_split(cfg)
        if report == "ppo":
            count, samples = cfg.ppo.report_prompts, cfg.ppo.report_samples
        else:
            count, samples = getattr(cfg, report).report_prompts, 1
        split = DEVELOPMENT
    elif report in ("eval", "compare"):
        (records, source), count, samples, split = _test_split(cfg, report), cfg.eval.num_prompts, 1, TEST
    else:
        raise ValueError(f"no report prompts for {report!r}")
    chosen = records if count is None else records[:count]
    return ReportPrompts([r["prompt"] for r in chosen] * samples, [r.get("gold") for r in chosen] * samples,
                         source, split, samples)


def _development_split(cfg) -> tuple[list[dict], str]:
    source = STAGES["ppo"].inputs(cfg)["dev_prompts"]
    if source is None:
        return [], (f"no development prompts: ppo.data={cfg.ppo.data} is not the demo and ppo.eval_data is not set")
    return _read(cfg, source), input_path(cfg, source)


def _test_split(cfg, report: str) -> tuple[list[dict], str]:
    if cfg.eval.prompts and cfg.eval.prompts.lower() == "none":
        return [], "eval.prompts=none"
    source = STAGES[report].inputs(cfg)["prompts"]
    return _read(cfg, source), input_path(cfg, source)  # a file without prompts is the loader's error, naming it


def _read(cfg, source) -> list[dict]:
    from data.loaders import load_prompts

    return load_prompts(input_path(cfg, source))
