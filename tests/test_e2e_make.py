"""The whole chain through the Makefile on the micro preset: the stages must never break silently
between each other. Every artifact is checked, and so is the report that ties them together."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

STAGES = ["data", "pretrain", "sft", "rank", "reward", "ppo", "eval"]


@pytest.fixture(scope="module")
def chain(test_preset_chain):
    return test_preset_chain


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


@pytest.mark.slow
def test_every_stage_commits_a_complete_artifact(chain):
    run, _ = chain
    for stage in STAGES:
        m = manifest(run, stage)
        assert m["status"] == "complete" and m["stage"] == stage
        assert not (run / f"{stage}.partial").exists(), f"{stage} left its scratch directory behind"


@pytest.mark.slow
def test_the_chain_prints_no_library_progress_bars_for_loading_or_saving_weights(chain):
    _, proc = chain
    output = proc.stdout + proc.stderr
    assert "make" in output and "reward" in output  # the stages' own messages are there
    for bar in ("Loading weights", "Writing model shards"):
        assert bar not in output, f"transformers' '{bar}' bar in the chain's output"


@pytest.mark.slow
def test_each_stage_records_the_fingerprint_of_what_it_consumed(chain):
    run, _ = chain
    fp = {s: manifest(run, s)["fingerprint"] for s in STAGES}
    recorded = json.dumps({s: manifest(run, s)["inputs"] for s in ("sft", "rank", "reward", "ppo")})
    for upstream in ("pretrain", "sft", "reward"):
        assert fp[upstream] in recorded, f"no downstream manifest names the {upstream} artifact's fingerprint"


@pytest.mark.slow
def test_the_reward_model_learns_from_the_ranked_own_answers_and_is_measured_on_held_out_ones(chain):
    run, _ = chain
    report = json.loads((run / "rank" / "report.json").read_text())
    assert report["prompts"] == 12 and report["ranked"] + report["all_tied"] + report["skipped"] == 12
    assert len((run / "rank" / "rankings.jsonl").read_text().splitlines()) == report["ranked"]
    reward = manifest(run, "reward")
    assert str(run / "rank" / "rankings.jsonl") in reward["inputs"]["data"]["train"]
    assert any(k.endswith("data/rankings_train.jsonl") for k in reward["inputs"]["data"]["train"])
    assert "rank" in reward["inputs"]["data"]["own_answers"]
    assert "own answers" in (run / "reward" / "report.md").read_text()
    assert reward["metrics"]["own_rank_answers"] > 0  # every held-out own answer scored against gold
    assert "Best of n" in (run / "reward" / "report.md").read_text()


@pytest.mark.slow
def test_best_of_n_is_reported_from_the_held_out_own_answers_and_reproduced_by_its_command(chain):
    from data.gold import gold_score

    run, _ = chain
    m = manifest(run, "reward")["metrics"]
    # Blind and gold picks need no reward model: recomputed here from the rank stage's file, by the rule
    # written out. Each answer at a prompt's lowest temperature stands in turn against another of its
    # answers (a win 1, a tie 0.5): the gold pick is the best other answer, the blind pick the mean over
    # all others; a prompt's turns are averaged, and the win rate is the mean over prompts.
    def versus(other, standing):
        return 0.5 if abs(other - standing) <= 1e-6 else float(other > standing)

    per_prompt = {"blind": [], "gold": []}
    for line in (run / "rank" / "heldout_candidates.jsonl").read_text().splitlines():
        c = json.loads(line)
        golds = [gold_score(a, c["gold"]) for a in c["responses"]]
        if len(golds) < 2:
            continue
        turns = {"blind": [], "gold": []}
        for b, t in enumerate(c["temperatures"]):
            if t != min(c["temperatures"]):
                continue
            others = [g for i, g in enumerate(golds) if i != b]
            turns["gold"].append(versus(max(others), golds[b]))
            turns["blind"].append(sum(versus(g, golds[b]) for g in others) / len(others))
        for pick, values in turns.items():
            per_prompt[pick].append(sum(values) / len(values))
    assert len(per_prompt["gold"]) > 1
    assert m["own_rank_best_of_n_blind"] == pytest.approx(sum(per_prompt["blind"]) / len(per_prompt["blind"]))
    assert m["own_rank_best_of_n_gold"] == pytest.approx(sum(per_prompt["gold"]) / len(per_prompt["gold"]))
    assert m["own_rank_best_of_n_reward_model"] <= m["own_rank_best_of_n_gold"]  # gold's pick is the ceiling
    # the command that measures any reward model on any rank artifact gives the stage's own figures
    out = subprocess.run([sys.executable, "-m", "stages.reward.own_answers", str(run / "reward"), str(run / "rank")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"reward model {m['own_rank_best_of_n_reward_model']:.3f}" in out.stdout
    assert f"{m['own_rank_answers']} answers" in out.stdout


@pytest.mark.slow
def test_models_load_with_plain_transformers(chain):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    run, _ = chain
    for stage in ("pretrain", "sft", "ppo"):
        AutoModelForCausalLM.from_pretrained(run / stage)
        assert AutoTokenizer.from_pretrained(run / stage).chat_template
    rm = AutoModelForSequenceClassification.from_pretrained(run / "reward")
    assert rm.config.num_labels == 1


@pytest.mark.slow
def test_report_covers_every_section(chain):
    run, _ = chain
    md = (run / "eval" / "report.md").read_text()
    numbers = json.loads((run / "eval" / "report.json").read_text())
    for heading in ("## 1. Language modelling on held-out text", "## 2. Answers to held-out prompts",
                    "### Win rate of ppo", "### KL divergence from each baseline", "## 3. Reward model",
                    "## 4. Training curves", "## 5. Side by side"):
        assert heading in md, f"report.md lacks the section '{heading}'"
    assert "*Skipped:*" not in md, "a section was skipped although the chain made every artifact"
    assert list(numbers["models"]) == ["pretrain", "sft", "ppo"]
    for name, model in numbers["models"].items():
        assert model["lm"]["bits_per_byte"] > 0 and model["rm_mean"] is not None, name
    ppo_vs_sft = numbers["comparisons"][-1]
    assert (ppo_vs_sft["candidate"], ppo_vs_sft["baseline"]) == ("ppo", "sft")
    assert ppo_vs_sft["kl"]["k3_mean"] >= 0 and f"| KL(ppo ‖ sft) | {ppo_vs_sft['kl']['k1_mean']:.3f} |" in md
    w = ppo_vs_sft["win_rate_rm"]
    assert f"| ppo vs sft | **{w['win_rate']:.2f}** [{w['ci_low']:.2f}, {w['ci_high']:.2f}]" in md
    bar = numbers["quality_bar"]
    from pipeline.judge.quality_bar import MIN_PROMPTS

    too_few = ppo_vs_sft["prompts"] < MIN_PROMPTS  # configs/test.yaml evaluates on 8 prompts
    assert bar["gold_state"] in ("gold up", "gold level", "reward over-optimisation", "too few prompts")
    assert (bar["gold_state"] == "too few prompts") == too_few and not (too_few and bar["met"])
    assert f"**{bar['verdict']}**" in md
    for plot in ("lm", "scores", "win_rates", "kl", "length"):
        assert f"]({numbers['plots'][plot]})" in md and (run / "eval" / numbers["plots"][plot]).stat().st_size > 1000


@pytest.mark.slow
def test_rerunning_a_finished_stage_does_nothing(chain):
    run, _ = chain
    before = manifest(run, "sft")["created"]
    proc = subprocess.run(["make", "-C", str(ROOT), "sft", "CONFIG=configs/test.yaml",
                           f"OUT={run.parent}", f"PY={sys.executable}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "up to date" in (proc.stdout + proc.stderr).lower()
    assert manifest(run, "sft")["created"] == before


@pytest.mark.slow
def test_a_second_round_ranks_the_ppo_model_and_leaves_the_first_round_as_it_was(chain):
    """`make ppo run.rounds=2`: round 1 is up to date; round 2 ranks round 1's PPO answers, trains a reward
    model on both rounds' rankings and runs PPO from SFT against it, in artifacts of its own."""
    from pipeline.config.loader import load_config
    from stages.eval.stage import model_refs, reward_model_path

    run, _ = chain
    loop = ("rank", "reward", "ppo")
    first = {s: manifest(run, s)["fingerprint"] for s in loop}
    first_created = {s: manifest(run, s)["created"] for s in loop}

    def make_ppo():
        proc = subprocess.run(["make", "-C", str(ROOT), "ppo", "run.rounds=2", "CONFIG=configs/test.yaml",
                               f"OUT={run.parent}", f"PY={sys.executable}"], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    make_ppo()
    assert {s: manifest(run, s)["created"] for s in loop} == first_created  # round 1: up to date, not redone
    rank2, reward2, ppo2 = (manifest(run, f"{s}-r2") for s in loop)
    assert rank2["inputs"]["policy"]["fingerprint"] == first["ppo"]
    assert {str(run / d / "rankings.jsonl") for d in ("rank", "rank-r2")} <= set(reward2["inputs"]["data"]["train"])
    assert set(reward2["inputs"]["data"]["own_answers"]) == {"rank", "rank-r2"}
    assert ppo2["inputs"]["reward_model"]["fingerprint"] == reward2["fingerprint"]
    assert ppo2["inputs"]["policy"]["fingerprint"] == manifest(run, "sft")["fingerprint"]

    created = {s: manifest(run, f"{s}-r2")["created"] for s in loop}
    again = make_ppo()
    for stage in ("pretrain", "sft", *loop, *(f"{s}-r2" for s in loop)):
        assert f"{run / stage} is up to date" in again, stage
    assert {s: manifest(run, f"{s}-r2")["created"] for s in loop} == created

    cfg = load_config("configs/test.yaml", [f"run.out_dir={run.parent}", "run.name=test", "run.rounds=2"])
    assert model_refs(cfg)[-1][:2] == ("ppo", str(run / "ppo-r2"))  # evaluation's candidate: the last round's
    assert reward_model_path(cfg)[0] == str(run / "reward-r2")
