"""FSDP (torch's fully_shard, FSDP2, through accelerate) on 2 CPU processes over gloo, with
configs/accelerate/cpu_fsdp.yaml: each process holds half of every parameter while it trains, the artifact is the
whole model in safetensors that plain `transformers` loads, and the training matches the unsharded run.

What may differ from the unsharded run, and why the tolerances are not 0: FSDP reduce-scatters the gradients
(each process sums its half in another order than DDP's all-reduce or one process's backward), the gradient norm
for clipping is summed from shards, and pretraining's lean forward (which reads layer weights directly) gives
way to the Hugging Face forward, which FSDP's layer hooks gather weights for. Dropout is off in these models.
"""

import pytest
import torch

from tests.launch_fixtures import launch, launch_record, logged
from tests.test_distributed_batch import make_dry_run
from tests.test_distributed_training import same_trajectory
from tests.test_pretrain import ARGS as PRETRAIN_ARGS
from tests.test_pretrain import corpus, uninterrupted, val_losses  # noqa: F401  (fixtures: a text, 1 process)
from tests.test_sft import chat_files  # noqa: F401  (the fixture: 80 training and 8 held-out chats)

LOSS_TOL = 1e-4  # what the DDP equivalence tests allow too (tests/test_distributed_training.py)
WEIGHT_TOL = 1e-4


def sharded_in_halves(stdout: str, what: str) -> None:
    """Both processes said they hold half of the parameters (accelerate printed nothing of the sort for DDP)."""
    lines = [line for line in stdout.splitlines() if line.startswith("fsdp: process") and what in line]
    assert len(lines) == 2, stdout[-2000:]
    for line in lines:
        held, total = (int(n.replace(",", "")) for n in line.split(" holds ")[1].split(" parameters")[0]
                       .split(" of the "))
        assert abs(held - total / 2) <= 0.01 * total, line


def ran_sharded(artifact) -> None:
    record = launch_record(artifact)
    assert record["distributed_type"] == "FSDP" and record["num_processes"] == 2 and record["backend"] == "gloo"


def same_weights(artifact, reference) -> None:
    """Both artifacts load with plain transformers, and every tensor agrees."""
    from transformers import AutoModelForCausalLM

    mine = AutoModelForCausalLM.from_pretrained(artifact).state_dict()
    theirs = AutoModelForCausalLM.from_pretrained(reference).state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=WEIGHT_TOL, msg=name)


@pytest.mark.slow
def test_pretraining_sharded_on_two_processes_resumes_and_matches_one_process(tmp_path, uninterrupted, corpus):  # noqa: F811
    # The reference: 1 process x 2 accumulation steps x 8 sequences, 40 steps. Here 2 processes x 1 x 8, stopped
    # after the checkpoint at step 10 (the test hook raises Ctrl-C on both) and resumed from it.
    args = [*PRETRAIN_ARGS, f"run.out_dir={tmp_path}", "run.name=fsdp", f"train.data={corpus}"]
    stopped = launch("stages.pretrain", args, config="cpu_fsdp.yaml", env={"RLHF_STOP_AFTER_STEP": "10"}, check=False)
    assert stopped.returncode != 0 and not (tmp_path / "fsdp" / "pretrain").exists()
    sharded_in_halves(stopped.stdout, "model")
    proc = launch("stages.pretrain", args, config="cpu_fsdp.yaml")
    assert "resuming from step 10" in proc.stdout
    artifact = tmp_path / "fsdp" / "pretrain"
    assert val_losses(artifact) == pytest.approx(val_losses(uninterrupted), abs=LOSS_TOL)
    assert [s for s, _ in logged(artifact, "train_loss")] == [s for s, _ in logged(uninterrupted, "train_loss")]
    same_weights(artifact, uninterrupted)
    ran_sharded(artifact)


@pytest.mark.slow
def test_sft_sharded_on_two_processes_matches_one_process(tmp_path, tiny_lm_dir, chat_files):  # noqa: F811
    from stages.sft.stage import main

    train, val = chat_files
    args = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", f"sft.init_from={tiny_lm_dir}",
            f"sft.data={train}", f"sft.val_data={val}", "sft.max_steps=8", "sft.sequences_per_step=8",
            "sft.batch_size=8", "sft.eval_every=4", "sft.log_every=1", "sft.save_every=100", "sft.gold_prompts=2",
            "sft.num_samples=0", "sft.max_new_tokens=8", "sft.lr=0.003", "sft.warmup_ratio=0"]
    assert main([*args, "run.name=one"]) == 0
    proc = launch("stages.sft", [*args, "run.name=fsdp"], config="cpu_fsdp.yaml")
    sharded_in_halves(proc.stdout, "model")
    one, two = tmp_path / "one" / "sft", tmp_path / "fsdp" / "sft"
    for key in ("loss", "grad_norm", "eval_loss"):  # within 1e-4 at every step, as DDP's
        same_trajectory(one, two, key)
    same_weights(two, one)
    ran_sharded(two)


def test_make_shard_fsdp_launches_with_the_fsdp_config_for_this_machine():
    out = make_dry_run("sft", "NPROC=2", "SHARD=fsdp").stdout
    assert "--config_file configs/accelerate/cpu_fsdp.yaml --num_processes 2" in out and "-m stages.sft" in out
    bad = make_dry_run("sft", "NPROC=2", "SHARD=zero3")
    assert bad.returncode != 0 and "SHARD=zero3: the one sharded backend here is SHARD=fsdp" in bad.stderr
