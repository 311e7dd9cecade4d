"""The fault-injection suite, short: every stage killed with kill -9 at random moments resumes to the
uninterrupted run's metrics, history and weights, and no artifact is ever half-written; a changed config
after a kill is refused; a diverging run, a full disk and a second concurrent run are stopped cleanly.
`make faults` runs the full version (20 kills per stage, every scenario for every stage)."""

import pytest

from faults.stages import STAGES
from faults.suite import Report, Suite

BY_NAME = {s.name: s for s in STAGES}


@pytest.fixture(scope="module")
def suite(test_preset_chain, tmp_path_factory):
    run_dir, _ = test_preset_chain  # the uninterrupted chain is the reference
    return Suite(tmp_path_factory.mktemp("faults"), reference=run_dir.parent, seed=1, log=lambda *_: None)


def assert_clean(rep: Report) -> None:
    assert not rep.failures, "\n\n".join(rep.failures)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [s.name for s in STAGES if s.kill])
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
