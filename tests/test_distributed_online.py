"""PPO, GRPO and RLOO run to completion on 2 gloo processes with the global batch of one process, and their
manifests say so. (Sampling differs per process, so these runs are not step-for-step equal to one process:
the reductions that make them equivalent in expectation are checked exactly in
test_distributed_reductions.py.) Each launch starts two processes with torch and transformers: slow."""

import pytest

from tests.launch_fixtures import launch, launch_record, logged
from tests.test_align import argv as align_argv
from tests.test_align import run_dir as align_dir  # noqa: F401  (fixture: SFT and reward models, prompts, pairs)
from tests.test_ppo_stage import argv as ppo_argv
from tests.test_ppo_stage import run_dir  # noqa: F401  (fixture: SFT and reward models, prompts)


def on_two_processes(artifact):
    assert launch_record(artifact) == {"num_processes": 2, "num_machines": 1, "backend": "gloo",
                                       "distributed_type": "MULTI_CPU", "mixed_precision": "no"}


@pytest.mark.slow
def test_ppo_completes_on_two_processes_with_the_global_batch(run_dir):  # noqa: F811
    proc = launch("stages.ppo", ppo_argv(run_dir, "ppo.num_minibatches=2"))
    assert "16 episodes per rollout (8 per process x 2 processes)" in proc.stdout
    artifact = run_dir / "runs" / "t" / "ppo"
    on_two_processes(artifact)
    assert [e for _, e in logged(artifact, "episodes")] == [16, 32]  # 2 rollouts of 16 over both processes


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_grpo_and_rloo_complete_on_two_processes_with_the_global_batch(align_dir, method):  # noqa: F811
    proc = launch("stages.align", align_argv(align_dir, method, f"{method}.answers_per_step=8"))
    assert "8 answers per step (4 per micro-batch x 2 processes x 1 accumulation steps)" in proc.stdout
    artifact = align_dir / "runs" / "t" / method
    on_two_processes(artifact)
