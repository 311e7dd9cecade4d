"""`make compare`: every finished method against SFT on the same held-out prompts, in one report."""

import json
import math
import shutil

import pytest

import stages.align.stage as align
from pipeline.artifacts.store import ArtifactWriter, read_manifest
from stages.compare.stage import main as compare
from tests.test_align import argv, run_dir  # noqa: F401 - the fixture: tiny sft + reward artifacts and data


def test_compare_reports_each_method_against_sft_with_intervals_kl_cost_and_verdict(run_dir, capsys):  # noqa: F811
    assert align.main(argv(run_dir, "dpo")) == 0
    # A "PPO" that is SFT itself: every difference must come out as none at all.
    writer = ArtifactWriter(run_dir / "runs" / "t" / "ppo", "ppo")
    shutil.copytree(run_dir / "runs" / "t" / "sft", writer.out_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("manifest.json"))
    writer.commit(config={"ppo": {"total_episodes": 64}})
    args = argv(run_dir, "dpo", f"eval.prompts={run_dir / 'held.jsonl'}", "eval.num_prompts=4")
    assert compare(args) == 0
    out = run_dir / "runs" / "t" / "compare"
    report = json.loads((out / "compare.json").read_text())
    rows = {r["candidate"]: r for r in report["methods"]}
    assert set(rows) == {"ppo", "dpo", "best-of-4"} and report["prompts"]["count"] == 4
    same = rows["ppo"]
    assert same["kl"]["k1_mean"] == pytest.approx(0.0, abs=1e-5)
    assert same["win_rate_rm"]["win_rate"] == 0.5 and same["gold_difference"]["mean"] == 0.0
    assert same["cost"]["used"] == "64 sampled answers"
    dpo = rows["dpo"]
    assert dpo["kl"]["k1_mean"] != pytest.approx(0.0, abs=1e-5)  # DPO moved the model
    lo, hi = dpo["win_rate_rm"]["ci_low"], dpo["win_rate_rm"]["ci_high"]
    assert 0 <= lo <= dpo["win_rate_rm"]["win_rate"] <= hi <= 1
    assert dpo["cost"]["wall_time_s"] > 0 and "pair updates" in dpo["cost"]["used"]
    md = (out / "compare.md").read_text()
    assert "| dpo |" in md and "| ppo |" in md and "quality bar" in md.lower()
    assert "win rate 0.50 < 0.65" in md  # the unchanged model fails the bar, in PPO's words
    assert (out / "frontier.png").is_file() and read_manifest(out)["status"] == "complete"
    assert compare(args) == 0 and "up to date" in capsys.readouterr().out
    # best of n (compare.best_of_n=4 by default) beside the methods: the reward model's choice among four SFT
    # answers, its KL the analytic log n - (n-1)/n, its win rates over the same SFT answers
    best = rows["best-of-4"]
    assert best["kl"]["k1_mean"] == pytest.approx(math.log(4) - 3 / 4) and "analytic" in best["kl"]["analytic"]
    assert best["answers"] == 4 and best["cost"]["used"] == "4 SFT answers per prompt, no training"
    assert best["win_rate_rm"]["win_rate"] >= 0.5  # it kept the reward model's favourite of four
    assert 0 <= best["win_rate_gold"]["win_rate"] <= 1 and best["gold_difference"] is not None
    assert "| best-of-4 |" in md and "log n - (n-1)/n = 0.64 nats" in md
    assert compare(args + ["compare.best_of_n=0"]) == 0  # off: the report lists the trained methods alone
    assert {r["candidate"] for r in json.loads((out / "compare.json").read_text())["methods"]} == {"ppo", "dpo"}


def test_compare_without_any_method_names_the_make_targets(run_dir, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        compare(argv(run_dir, "dpo"))
    assert e.value.code == 2
    assert "make dpo" in capsys.readouterr().err


def test_frontier_labels_of_methods_in_the_same_place_do_not_print_over_each_other():
    from stages.compare.report import label_offsets

    # PPO and RLOO at the same KL and gold (as on the tiny chain), GRPO and DPO elsewhere
    offsets = label_offsets([(2.07, 0.027), (10.7, 0.024), (3.8, 0.025), (2.05, 0.0272)])
    assert offsets[0] == offsets[1] == offsets[2] == (6, 4)  # apart from the others: the usual place
    assert offsets[3] != offsets[0]  # RLOO's label moves off PPO's
    # three methods on one spot take three lines
    assert len(set(label_offsets([(1.0, 0.01)] * 3))) == 3
