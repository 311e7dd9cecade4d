"""The whole chain through the Makefile on the micro preset: the stages must never break silently
between each other. Every artifact is checked, and so is the report that ties them together."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

STAGES = ["data", "pretrain", "sft", "reward", "ppo", "eval"]


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
def test_each_stage_records_the_fingerprint_of_what_it_consumed(chain):
    run, _ = chain
    fp = {s: manifest(run, s)["fingerprint"] for s in STAGES}
    recorded = json.dumps({s: manifest(run, s)["inputs"] for s in ("sft", "reward", "ppo")})
    for upstream in ("pretrain", "sft", "reward"):
        assert fp[upstream] in recorded, f"no downstream manifest names the {upstream} artifact's fingerprint"


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
    report = (run / "eval" / "report.md").read_text().lower()
    for section in ("language modelling", "reward model", "win rate", "kl", "training curves"):
        assert section in report, f"report.md lacks '{section}'"
    numbers = json.loads((run / "eval" / "report.json").read_text())
    assert numbers, "report.json is empty"
    assert list((run / "eval").glob("*.png")), "no plots"


@pytest.mark.slow
def test_rerunning_a_finished_stage_does_nothing(chain):
    run, _ = chain
    before = manifest(run, "sft")["created"]
    proc = subprocess.run(["make", "-C", str(ROOT), "sft", "CONFIG=configs/test.yaml",
                           f"OUT={run.parent}", f"PY={sys.executable}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "up to date" in (proc.stdout + proc.stderr).lower()
    assert manifest(run, "sft")["created"] == before
