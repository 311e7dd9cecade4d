"""A launch that loses a process: pretraining on 2 gloo processes, rank 1 killed with kill -9 after the first
checkpoint. Nothing may hang: the launch ends within faults.distributed.KILL_BOUND_S, the main process says why
in one line, nothing is committed, and the same command resumes and finishes."""

import sys

import pytest

from faults.distributed import KILL_BOUND_S, finished, kill_one_rank, kill_problems
from pipeline.artifacts.metrics import read_metrics
from pipeline.artifacts.store import is_complete
from tests.conftest import tiny_text

# 2 layers at context 32, 8 sequences per process and step; a checkpoint every 5 of 40 steps
ARGS = ["--config", "configs/test.yaml", "model.block_size=32", "train.batch_size=8", "train.tokens_per_step=512",
        "train.max_steps=40", "train.warmup_steps=4", "train.eval_every=20", "train.log_every=5",
        "train.checkpoint_every=5", "train.eval_batches=2", "train.sample_temperatures=[0.0]"]


@pytest.mark.slow  # two launches of two processes each: ~25 s on 2 quiet cores, ~55 s on busy ones
def test_killing_one_rank_ends_the_launch_in_one_line_and_the_rerun_resumes(tmp_path):
    corpus = tmp_path / "plays.txt"
    corpus.write_text(tiny_text(40_000))
    command = [sys.executable, "-m", "stages.pretrain", *ARGS, f"run.out_dir={tmp_path}", "run.name=k",
               f"train.data={corpus}"]
    run = tmp_path / "k"
    result = kill_one_rank(command, tmp_path, run / "pretrain.lock",
                           lambda: (run / "pretrain.partial" / "checkpoints" / "latest.pt").is_file())
    assert kill_problems(result, run / "pretrain") == [], result.output[-3000:]
    assert result.seconds < KILL_BOUND_S
    ours = [line for line in result.output.splitlines() if "error: process 0 of 2" in line]
    assert len(ours) == 1, result.output[-3000:]  # the main process's one line, no traceback of ours
    assert "re-run the same command to resume" in ours[0]

    rc, out = finished(command)
    assert rc == 0, out[-3000:]
    assert "resum" in out.lower()
    assert is_complete(run / "pretrain")
    steps = [r["step"] for r in read_metrics(run / "pretrain") if "train_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # written once, by the main process
