"""`python -m stages.eval` on a fake run of tiny models: every section, and honest about what it skipped."""

import json
import math
from pathlib import Path

import pytest
from eval_fixtures import fake_run, lively_copy, prompt_files

from pipeline.artifacts.store import is_complete
from pipeline.errors import UserError
from stages.eval.stage import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "test.yaml")
SECTIONS = ["## 1. Language modelling", "## 2. Answers to held-out prompts", "## 3. Reward model",
            "## 4. Training curves", "## 5. Side by side"]


def run_eval(root, runs, *overrides):
    main(["--config", CONFIG, "run.name=fx", f"run.out_dir={runs}", *overrides])
    out = runs / "fx" / "eval"
    assert is_complete(out)
    report = json.loads((out / "report.json").read_text())
    return out, report, (out / "report.md").read_text()


@pytest.fixture(scope="module")
def full(tiny_lm_dir, tmp_path_factory):
    """The whole run (pretrain, SFT, PPO, reward model, metrics) with gold answers."""
    root = tmp_path_factory.mktemp("eval_full")
    runs = fake_run(root, tiny_lm_dir)
    prompts, text = prompt_files(root)
    # A seed whose samples of these random models include PPO/SFT pairs of matched length and no gold credit,
    # which test_report_numbers reads (the answers are drawn per prompt: pipeline/judge/answering.py).
    return run_eval(root, runs, f"eval.prompts={prompts}", f"eval.lm_data={text}", "eval.seed=1")


def test_report_has_every_section_and_its_pictures(full):
    out, report, md = full
    for section in SECTIONS:
        assert section in md
    assert "Skipped" not in md
    for name in ("lm.png", "scores.png", "win_rates.png", "kl.png", "length.png", "curves_pretrain.png",
                 "curves_sft.png", "curves_reward.png", "curves_ppo.png"):
        assert (out / name).stat().st_size > 1000
        assert f"]({name})" in md
    assert (out / "answers.jsonl").read_text().count("\n") == 6


def test_report_numbers(full):
    out, report, md = full
    assert list(report["models"]) == ["pretrain", "sft", "ppo"]
    assert report["candidate"] == "ppo"
    for m in report["models"].values():
        assert m["lm"]["bits_per_byte"] > 0 and m["lm"]["perplexity"] > 1
        assert m["rm_mean"] is not None and 0 <= m["gold_mean"] <= 1
    ppo_vs_sft = report["comparisons"][-1]
    assert (ppo_vs_sft["candidate"], ppo_vs_sft["baseline"]) == ("ppo", "sft")
    for key in ("win_rate_rm", "win_rate_gold", "win_rate_rm_matched_length"):
        w = ppo_vs_sft[key]
        assert 0 <= w["ci_low"] <= w["win_rate"] <= w["ci_high"] <= 1
    assert ppo_vs_sft["win_rate_rm"]["n"] == 6
    assert ppo_vs_sft["kl"]["k3_mean"] > 0 and len(ppo_vs_sft["kl_per_answer"]) == 6
    assert report["reward_model"]["metrics"]["heldout_accuracy"] == 0.81
    assert "| heldout_accuracy | 0.810 |" in md
    assert report["curves"]["ppo"] == ["gold", "kl", "score"]
    assert len(report["samples"]) == 3  # eval.num_side_by_side in configs/test.yaml
    # the untrained models' answers all score 0 on gold: no rank correlation exists, and none is printed
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert {a[m]["gold"] for a in answers for m in ("ppo", "sft")} == {0.0}
    assert ppo_vs_sft["rm_gold_spearman"] is None and report["rm_gold_spearman"] is None
    assert "Spearman" not in md


def test_the_rank_correlation_is_given_over_all_answers_and_over_each_compared_pair():
    from stages.eval.report import spearman_lines

    report = {"rm_gold_spearman": 0.4016, "comparisons": [
        {"candidate": "ppo", "baseline": "pretrain", "rm_gold_spearman": 0.52},
        {"candidate": "ppo", "baseline": "sft", "rm_gold_spearman": 0.3898}]}
    line = spearman_lines(report)[0]
    assert "over all answers: **0.402**" in line
    assert line.endswith("Over ppo's and pretrain's answers only: 0.520. Over ppo's and sft's answers only: 0.390.")
    assert spearman_lines({"rm_gold_spearman": None, "comparisons": report["comparisons"]}) == []


def test_report_judges_the_quality_bar_of_ppo_against_sft_on_intervals_and_names_the_gold_state(full):
    out, report, md = full
    bar = report["quality_bar"]
    assert (bar["candidate"], bar["baseline"]) == ("ppo", "sft")
    # The paired gold difference, recomputed by hand from the per-answer gold scores in answers.jsonl.
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    diffs = [r["ppo"]["gold"] - r["sft"]["gold"] for r in rows]
    mean = sum(diffs) / len(diffs)
    t5 = 2.570582  # Student t(0.975) with 6 - 1 degrees of freedom, from the table
    half = t5 * math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) / math.sqrt(len(diffs))
    gold = bar["gold_difference"]
    assert (gold["n"], gold["prompts"]) == (6, 6)
    assert (gold["mean"], gold["ci_low"], gold["ci_high"]) == pytest.approx((mean, mean - half, mean + half))
    # Six prompts are too few to judge (the bar needs 30): the numbers are shown, no gold state is claimed.
    assert bar["gold_state"] == "too few prompts" and not bar["met"]
    assert bar["verdict"].startswith("too few prompts to judge (6 < 30)")
    assert "**Quality bar**, ppo vs sft" in md and bar["verdict"] in md


def test_without_reward_model_or_gold_it_reports_what_it_can_and_says_what_it_skipped(full, tiny_lm_dir, tmp_path):
    a = lively_copy(tiny_lm_dir, tmp_path / "model_a", seed=11)  # plain HF dirs: no manifest
    b = lively_copy(tiny_lm_dir, tmp_path / "model_b", seed=12)
    prompts, _ = prompt_files(tmp_path, with_gold=False)
    out, report, md = run_eval(tmp_path, tmp_path / "runs", f"eval.models=[{a},{b}]", f"eval.prompts={prompts}",
                               "eval.lm_data=none", "eval.reward_model=none", "eval.seed=1")
    for section in SECTIONS:
        assert section in md
    skipped = " ".join(report["skipped"])
    for what in ("language modelling", "reward-model scores", "gold", "training curves", "reward model section"):
        assert what in skipped
    assert md.count("*Skipped:*") >= 3
    assert list(report["models"]) == ["model_a", "model_b"]
    comparison = report["comparisons"][0]
    assert "win_rate_rm" not in comparison and comparison["kl"]["n"] == 6
    # Same seed, same model, same questions: the same answers as in the full run's answers.jsonl.
    first = json.loads((full[0] / "answers.jsonl").read_text().splitlines()[0])
    again = json.loads((out / "answers.jsonl").read_text().splitlines()[0])
    assert again["model_a"]["answer"] == first["pretrain"]["answer"]  # both are lively_copy(seed=11)


def test_no_model_to_evaluate_names_the_make_targets(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--config", CONFIG, "run.name=empty", f"run.out_dir={tmp_path}"])
    assert e.value.code == 2


def test_model_refs_error_message(tmp_path):
    from pipeline.config.loader import load_config
    from stages.eval.stage import model_refs

    cfg = load_config(CONFIG, ["run.name=empty", f"run.out_dir={tmp_path}"])
    with pytest.raises(UserError, match="make pretrain"):
        model_refs(cfg)
    cfg = load_config(CONFIG, [f"eval.models=[{tmp_path}]"])
    with pytest.raises(UserError, match="not a model directory"):
        model_refs(cfg)


def test_this_runs_models_can_be_named_by_stage(full):
    from pipeline.config.loader import load_config
    from stages.eval.stage import model_refs

    runs = full[0].parent.parent
    cfg = load_config(CONFIG, ["run.name=fx", f"run.out_dir={runs}", "eval.models=[sft,ppo]"])
    assert [(name, path) for name, path, _ in model_refs(cfg)] == [
        ("sft", str(runs / "fx" / "sft")), ("ppo", str(runs / "fx" / "ppo"))]

