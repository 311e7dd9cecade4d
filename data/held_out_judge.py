"""The held-out judge a run's reports use (`judge.gold`), built with what only data/ knows: the demo's gold
metric (data/gold.py: the `demo` judge, and the rankings judge's text similarity) and how a rankings file
is read (data/loaders.py). The judges themselves live in pipeline/judge/gold.py."""

from __future__ import annotations

from data.gold import gold_score
from pipeline.judge.gold import GoldJudge, build_gold


def held_out_judge(cfg, device=None, batch_size: int = 32) -> GoldJudge:
    """The judge `cfg.judge.gold` names, loaded on `device` where it is a model."""
    from data.loaders import load_rankings

    return build_gold(cfg.judge.gold, metric=gold_score, rankings=load_rankings, device=device,
                      batch_size=batch_size)
