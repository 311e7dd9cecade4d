"""The results summary is read from a finished run's artifacts: each number in it is the report's."""

import json

import pytest

from pipeline.errors import UserError
from stages.eval.summary import summary


def _manifest(d, created="2026-12-06T08:00:00+0000", wall=10.0):
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"status": "complete", "created": created, "wall_time_s": wall}))


def test_the_summary_quotes_the_eval_report_and_the_stage_times(tmp_path):
    run = tmp_path / "tiny"
    for stage, wall in (("pretrain", 120.0), ("sft", 60.0), ("ppo", 90.0)):
        _manifest(run / stage, wall=wall)
    _manifest(run / "eval", wall=30.0)
    interval = {"ci_low": 0.78, "ci_high": 0.86}
    report = {"run": "tiny", "prompts": {"count": 286, "source": "eval_prompts.jsonl"},
              "comparisons": [{"candidate": "ppo", "baseline": "pretrain"},
                              {"candidate": "ppo", "baseline": "sft", "kl": {"k1_mean": 2.074},
                               "win_rate_rm": {"win_rate": 0.8252, **interval},
                               "gold_difference": {"mean": 0.0273, "ci_low": 0.0106, "ci_high": 0.0439},
                               "win_rate_gold": {"win_rate": 0.5612, "ci_low": 0.50, "ci_high": 0.62}}],
              "quality_bar": {"verdict": "quality bar met: gold up"},
              "models": {"pretrain": {"lm": {"bits_per_byte": 1.8986}, "gold_mean": 0.044},
                         "sft": {"gold_mean": 0.1017}},
              "lm_baseline": {"lm": {"bits_per_byte": 2.1030}}}
    (run / "eval" / "report.json").write_text(json.dumps(report))
    text = summary(run)
    assert "evaluated 2026-12-06: stages took 5.0 min summed (pretrain 120 s, sft 60 s, ppo 90 s, eval 30 s)" in text
    assert "ppo against sft on 286 test prompts" in text and text.count("against") == 1  # sft baselines only
    assert "RM win rate **0.825** [0.780, 0.860] at KL 2.07 nats" in text
    assert "paired difference **+0.027** [+0.011, +0.044], gold win rate **0.561** [0.500, 0.620]" in text
    assert '"quality bar met: gold up"' in text
    assert "1.90 bits/byte on held-out text (bigram baseline 2.10)" in text
    assert "pretrain 0.044, sft 0.102" in text


def test_without_an_eval_report_it_names_the_command(tmp_path):
    with pytest.raises(UserError, match="make eval"):
        summary(tmp_path / "tiny")
