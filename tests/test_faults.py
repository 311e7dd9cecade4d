"""The fault-injection suite, short: every stage killed with kill -9 at random moments resumes to the
uninterrupted run's metrics, history and weights, and no artifact is ever half-written; a changed config
after a kill is refused; a diverging run, a full disk and a second concurrent run are stopped cleanly.
`make faults` runs the full version (20 kills per stage, every scenario for every stage, DPO, GRPO and RLOO
included); here those three are resumed in process from a mid-run checkpoint instead (seconds, not minutes)."""

import json
import shutil

import pytest

from faults.stages import STAGES, Stage
from faults.suite import Report, Suite

BY_NAME = {s.name: s for s in STAGES}
IN_CHAIN = [s for s in STAGES if s.name not in ("dpo", "grpo", "rloo")]  # what the shared chain builds


@pytest.fixture(scope="module")
def suite(test_preset_chain, tmp_path_factory):
    run_dir, _ = test_preset_chain  # the uninterrupted chain is the reference
    return Suite(tmp_path_factory.mktemp("faults"), IN_CHAIN, reference=run_dir.parent, seed=1, log=lambda *_: None)


def assert_clean(rep: Report) -> None:
    assert not rep.failures, "\n\n".join(rep.failures)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [s.name for s in IN_CHAIN if s.kill])
def test_a_stage_killed_twice_resumes_to_the_uninterrupted_result(suite, stage):
    rep = Report(stage)
    suite.kill_trials(BY_NAME[stage], kills=2, per_trial=2, rep=rep)
    assert_clean(rep)
    assert rep.kills == 2 and rep.corrupt == 0
    assert rep.within == rep.trials  # every final run matched the reference (exactly where tolerance is 0)


@pytest.mark.slow
def test_a_changed_config_after_a_kill_is_refused_and_the_old_command_resumes(suite):
    rep = Report("ppo")
    suite.check_change(BY_NAME["ppo"], rep)
    assert_clean(rep)
    assert rep.checks["change"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["diverge", "disk", "twice"])
def test_pretrain_stops_cleanly_on_nan_a_full_disk_and_a_second_run(suite, scenario):
    rep = Report("pretrain")
    getattr(suite, f"check_{'disk_full' if scenario == 'disk' else scenario}")(BY_NAME["pretrain"], rep)
    assert_clean(rep)
    assert rep.checks[scenario] == "ok"


# ---------------------------------------------------------------- fast: a TRL stage resumed mid-run, in process

@pytest.fixture
def align_inputs(tiny_lm_dir, tmp_path):
    """An SFT model, a reward model and the data DPO, GRPO and RLOO read, under tmp_path."""
    from tests.stage_fixtures import sft_and_reward

    sft_and_reward(tiny_lm_dir, tmp_path)
    (tmp_path / "rankings.jsonl").write_text("".join(json.dumps({
        "prompt": f"What does function number {i} do?",
        "responses": [f"It returns {i}.", f"It prints {i} twice.", "No idea.", f"Number {i} is a function."],
        "ranking": [0, 3, 1, 2]}) + "\n" for i in range(12)))
    (tmp_path / "held_rankings.jsonl").write_text("".join((tmp_path / "rankings.jsonl").read_text().splitlines(True)[:2]))
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"What does function number {i} do?"}) + "\n" for i in range(20)))
    (tmp_path / "held.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Explain object {i}", "gold": f"object {i} does things"}) + "\n"
                for i in range(2)))
    return tmp_path


def align_argv(root, method):
    from tests.stage_fixtures import fixed_reward_stats

    args = ["--config", "configs/test.yaml", f"run.out_dir={root / 'runs'}", "run.name=t", f"align.method={method}",
            f"dpo.data={root / 'rankings.jsonl'}", f"dpo.val_data={root / 'held_rankings.jsonl'}", f"ppo.data={root / 'prompts.jsonl'}",
            f"ppo.eval_data={root / 'held.jsonl'}", f"grpo.data={root / 'prompts.jsonl'}", "dpo.report_prompts=2",
            "grpo.report_prompts=2"]
    fixed_reward_stats(args)
    return args


@pytest.mark.parametrize("method,stop_at", [("grpo", 3), ("dpo", 5)])
def test_a_trl_stage_resumed_from_a_mid_run_checkpoint_ends_with_the_uninterrupted_metrics(
        align_inputs, monkeypatch, method, stop_at):
    """Everything the manifest and metrics.jsonl record (clocks aside) and the weights equal an uninterrupted
    run's: the Trainer's own train_loss averages only the steps of the process that ran them."""
    import stages.align.stage as align
    from faults.suite import differences, max_difference, result
    from tests.stage_fixtures import StopAtStep, with_callbacks

    module = align.dpo if method == "dpo" else align.online
    argv = align_argv(align_inputs, method)
    with_callbacks(monkeypatch, module, StopAtStep(stop_at))  # the checkpoints a kill -9 leaves: the one before
    with pytest.raises(SystemExit):
        align.main(argv)
    with_callbacks(monkeypatch, module)
    run_dir = align_inputs / "runs" / "t"
    assert (run_dir / f"{method}.partial" / "checkpoints").is_dir()
    assert align.main(argv) == 0
    stage = Stage(method, f"{method}.resume", "", None, "")
    resumed = result(run_dir, stage)
    shutil.rmtree(run_dir / method)
    assert align.main(argv) == 0  # the same run, never interrupted
    straight = result(run_dir, stage)
    assert "train_loss" in resumed["metrics"] and resumed["weights"]
    assert max_difference(resumed, straight) == 0.0, differences(resumed, straight)
