"""The over-optimisation curve during GRPO and RLOO (stages/align/curve.py): a point per development evaluation in
metrics.jsonl, the report and samples.md; keep=best commits the best point and survives a kill."""

import json
import shutil

import pytest

import stages.align.stage as align
from pipeline.artifacts.metrics import read_metrics
from pipeline.artifacts.store import read_manifest
from tests import test_align
from tests.stage_fixtures import StopAtStep, with_callbacks
from tests.test_align import argv

run_dir = test_align.run_dir  # SFT and reward artifacts, prompts, development prompts with gold


def test_grpo_draws_the_curve_and_commits_the_best_point(run_dir):
    assert align.main(argv(run_dir, "grpo", "grpo.sample_every=1", "grpo.keep=best")) == 0
    out = run_dir / "runs" / "t" / "grpo"
    curve = json.loads((out / "report.json").read_text())["curve"]
    assert [p["step"] for p in curve["points"]] == [0, 1, 2, 3, 4] and curve["prompts"] == 4
    start = curve["points"][0]
    assert start["kl_k3"] == pytest.approx(0, abs=1e-6) and start["win_rate_gold"] == 0.5  # SFT against itself
    assert curve["kept_step"] == curve["best"]["step"] and "grpo.sample_every" in curve["kept_why"]
    assert read_manifest(out)["metrics"]["kept_step"] == curve["kept_step"]
    logged = [r["step"] for r in read_metrics(out) if "eval/kl_k3" in r]
    assert logged == [0, 1, 2, 3, 4]
    assert f"**Kept: update {curve['kept_step']}**" in (out / "samples.md").read_text()
    assert (out / "curve.png").is_file()


@pytest.mark.slow
def test_keep_best_survives_a_kill_of_rloo(run_dir, monkeypatch):
    cmd = argv(run_dir, "rloo", "rloo.sample_every=1", "rloo.keep=best")
    with_callbacks(monkeypatch, align.online, StopAtStep(3))
    with pytest.raises(SystemExit):
        align.main(cmd)
    with_callbacks(monkeypatch, align.online)
    assert align.main(cmd) == 0  # resumed from the checkpoint at step 2 (configs/test.yaml: save_every 2)
    out = run_dir / "runs" / "t" / "rloo"
    resumed = json.loads((out / "report.json").read_text())["curve"]
    shutil.rmtree(out)
    assert align.main(cmd) == 0  # the same run, never interrupted
    straight = json.loads((out / "report.json").read_text())["curve"]
    assert [p["step"] for p in resumed["points"]] == [0, 1, 2, 3, 4]
    assert resumed["kept_step"] == straight["kept_step"]
    for a, b in zip(resumed["points"], straight["points"]):
        assert a["gold"] == pytest.approx(b["gold"]) and a["kl_k1"] == pytest.approx(b["kl_k1"], abs=1e-4)


def test_grpo_refuses_keep_best_without_development_gold(run_dir, capsys):
    (run_dir / "held.jsonl").write_text("".join(json.dumps({"prompt": f"Explain {i}"}) + "\n" for i in range(4)))
    with pytest.raises(SystemExit) as e:
        align.main(argv(run_dir, "grpo", "grpo.keep=best"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "grpo.keep=best" in err and "grpo.keep=last" in err
    assert not (run_dir / "runs" / "t" / "grpo.partial").exists()
