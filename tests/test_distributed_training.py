"""The trainer-based stages on 2 gloo processes train on the same batches as 1 process: SFT, reward and DPO
with the same global batch give the same loss at every step and the same final metrics.

What is allowed to differ, and why the tolerance is 1e-4 rather than 0: each process pads its own micro-batch
(other padded shapes, so other kernels and summation orders), and the gradients are summed across processes
by an all-reduce in another order than one process's backward sums them. Dropout is off in these models, so
no per-process random numbers enter the loss. Each run below takes seconds on a quiet machine; with 2
processes each starting torch and transformers, a pair takes 20-40 s on 2 shared cores (marked slow).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.launch_fixtures import launch, launch_record, logged
from tests.test_align import argv as align_argv
from tests.test_align import run_dir  # noqa: F401  (the fixture: an SFT model, a reward model, pairs, prompts)
from tests.test_pretrain import corpus, uninterrupted  # noqa: F401  (fixtures: a text, a 1-process pretraining)
from tests.test_reward_train import _lines, _rankings, _write_jsonl
from tests.test_sft import chat_files  # noqa: F401  (the fixture: 80 training and 8 held-out chats)

TOL = 1e-4


def same_trajectory(one, two, key: str):
    a, b = logged(one, key), logged(two, key)
    assert len(a) >= 2 and [s for s, _ in a] == [s for s, _ in b], key
    assert [v for _, v in b] == pytest.approx([v for _, v in a], abs=TOL), key


def ran_on(artifact, processes: int):
    record = launch_record(artifact)
    assert record["num_processes"] == processes and record["num_machines"] == 1
    assert record["backend"] == ("gloo" if processes > 1 else "none")


def one_process_stopped_after(step: int, module: str, args: list[str]) -> subprocess.CompletedProcess:
    """`python -m module args` on one process, stopped after optimizer step `step` as Ctrl-C stops it (the
    stages' test hook): exit code 130 and a checkpoint to resume from."""
    env = {**os.environ, "RLHF_STOP_AFTER_STEP": str(step), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, env=env, timeout=300)

@pytest.mark.slow
def test_sft_on_two_processes_matches_one_and_a_run_killed_on_one_resumes_on_two(tmp_path, tiny_lm_dir, chat_files):  # noqa: F811
    """The global batch is in the artifact's key and the Trainer's data order depends on the seed and the step
    only, so a checkpoint written by 1 process resumes on 2 and ends where an uninterrupted run ends, without
    the Trainer's warning (on the second process) that the per-process batch changed."""
    from stages.sft.stage import main

    train, val = chat_files
    args = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", f"sft.init_from={tiny_lm_dir}",
            f"sft.data={train}", f"sft.val_data={val}", "sft.max_steps=8", "sft.sequences_per_step=8",
            "sft.batch_size=8", "sft.eval_every=4", "sft.log_every=1", "sft.save_every=4", "sft.gold_prompts=0",
            "sft.num_samples=0", "sft.lr=0.003", "sft.warmup_ratio=0"]
    assert main([*args, "run.name=one"]) == 0
    proc = launch("stages.sft", [*args, "run.name=two"])
    assert "8 conversations per step (4 per micro-batch x 2 processes x 1 accumulation steps)" in proc.stdout
    one, two = tmp_path / "one" / "sft", tmp_path / "two" / "sft"
    for key in ("loss", "grad_norm", "eval_loss"):  # grad_norm: the processes' gradients were averaged
        same_trajectory(one, two, key)
    ran_on(one, 1), ran_on(two, 2)

    killed = one_process_stopped_after(6, "stages.sft", [*args, "run.name=moved"])
    assert killed.returncode == 130 and (tmp_path / "moved" / "sft.partial" / "checkpoints" / "checkpoint-4").is_dir()
    resumed = launch("stages.sft", [*args, "run.name=moved"])  # on 2 processes, from the 1 process's step 4
    assert "resuming from" in resumed.stdout and "trainer_state.json" not in resumed.stdout + resumed.stderr
    moved = tmp_path / "moved" / "sft"
    for key in ("loss", "grad_norm", "eval_loss"):
        same_trajectory(one, moved, key)
    ran_on(moved, 2)


@pytest.mark.slow
def test_reward_on_two_processes_matches_one(tmp_path, tiny_lm_dir):
    from stages.reward.stage import main

    train = _write_jsonl(tmp_path / "rank_train.jsonl", _rankings(24, 1))
    held = _write_jsonl(tmp_path / "rank_held.jsonl", _rankings(8, 2))
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in _lines(6, 3)])
    # K=3 rankings give 3 pairs per prompt: 6 pairs per step are two whole prompts, one per process.
    args = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", f"reward.init_from={tiny_lm_dir}",
            f"reward.data={train}", f"reward.val_data={held}", f"ppo.data={prompts}", "reward.max_length=96",
            "reward.max_steps=8", "reward.pairs_per_step=6", "reward.batch_size=6", "reward.lr=0.003",
            "reward.eval_every=4", "reward.log_every=1", "reward.save_every=100", "reward.warmup_ratio=0.0"]
    assert main([*args, "run.name=one"]) == 0
    proc = launch("stages.reward", [*args, "run.name=two"])
    assert "6 pairs per step (3 per micro-batch x 2 processes x 1 accumulation steps)" in proc.stdout
    one, two = tmp_path / "one" / "reward", tmp_path / "two" / "reward"
    for key in ("loss", "grad_norm", "heldout_accuracy"):
        same_trajectory(one, two, key)
    ran_on(one, 1), ran_on(two, 2)


@pytest.mark.slow
def test_dpo_on_two_processes_matches_one(run_dir):  # noqa: F811
    from stages.align.stage import main

    extra = [f"dpo.policy={run_dir / 'runs' / 't' / 'sft'}", "dpo.max_steps=6", "dpo.pairs_per_step=4", "dpo.batch_size=4", "dpo.eval_every=3", "dpo.log_every=1",
             "dpo.save_every=100", "dpo.lr=0.001", "dpo.warmup_ratio=0", "dpo.report_prompts=2"]
    assert main(align_argv(run_dir, "dpo", "run.name=one", *extra)) == 0
    launch("stages.align", align_argv(run_dir, "dpo", "run.name=two", *extra))
    one, two = run_dir / "runs" / "one" / "dpo", run_dir / "runs" / "two" / "dpo"
    for key in ("loss", "grad_norm", "eval_loss"):
        same_trajectory(one, two, key)
    ran_on(one, 1), ran_on(two, 2)


@pytest.mark.slow
def test_a_pretraining_run_killed_on_one_process_resumes_on_two(tmp_path, uninterrupted, corpus):  # noqa: F811
    """The global batch of a step depends on (seed, step) only, so the process count may change at a resume:
    killed after step 14 on one process, resumed on two from its step-10 checkpoint, it ends where an
    uninterrupted one-process run ends."""
    from tests.test_pretrain import ARGS, val_losses

    args = [*ARGS, f"run.out_dir={tmp_path}", "run.name=moved", f"train.data={corpus}"]
    killed = one_process_stopped_after(14, "stages.pretrain", args)
    assert killed.returncode == 130
    launch("stages.pretrain", args)
    final = tmp_path / "moved" / "pretrain"
    assert val_losses(final) == pytest.approx(val_losses(uninterrupted), abs=TOL)
    ran_on(final, 2)


def test_grpo_and_rloo_refuse_in_one_line_to_resume_on_another_number_of_processes(tmp_path, monkeypatch):
    """Each process's sampling continues from its own saved RNG state, so an online method's checkpoint
    resumes only on as many processes as wrote it; SFT, reward and DPO resume on any number."""
    from pipeline.errors import UserError
    from pipeline.lm.hf_glue import COMPLETE, resume_checkpoint

    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    for rank in (0, 1):  # what the Trainer leaves from 2 processes: one RNG state each
        (checkpoint / f"rng_state_{rank}.pth").write_bytes(b"state")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2, "max_steps": 4}))
    (checkpoint / COMPLETE).write_text(json.dumps({"rng_state_0.pth": 5, "rng_state_1.pth": 5}))

    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(UserError) as refused:
        resume_checkpoint(tmp_path / "checkpoints", "grpo.resume", "GRPO")
    line = str(refused.value)
    assert "\n" not in line and "written by 2 processes and this launch has 1" in line
    assert "launch it on 2" in line and "grpo.resume=false" in line
    assert checkpoint.is_dir()  # refused, nothing discarded
    assert resume_checkpoint(tmp_path / "checkpoints", "dpo.resume") == str(checkpoint)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resume_checkpoint(tmp_path / "checkpoints", "grpo.resume", "GRPO") == str(checkpoint)
