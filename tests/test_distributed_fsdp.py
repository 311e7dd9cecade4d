"""FSDP (torch's fully_shard, FSDP2, through accelerate) on 2 CPU processes over gloo, with
configs/accelerate/cpu_fsdp.yaml: each process holds half of every parameter while it trains, the artifact is the
whole model in safetensors that plain `transformers` loads, and the training matches the unsharded run.

What may differ from the unsharded run, and why the tolerances are not 0: FSDP reduce-scatters the gradients
(each process sums its half in another order than DDP's all-reduce or one process's backward), the gradient norm
for clipping is summed from shards, and pretraining's lean forward (which reads layer weights directly) gives
way to the Hugging Face forward, which FSDP's layer hooks gather weights for. Dropout is off in these models.
"""

import re

import pytest
import torch

from tests.launch_fixtures import launch, launch_record
from tests.test_distributed_batch import make_dry_run
from tests.test_distributed_training import same_trajectory
from tests.test_ppo_stage import argv as ppo_argv
from tests.test_ppo_stage import run_dir  # noqa: F401  (fixture: SFT and reward models, prompts)
from tests.test_pretrain import ARGS as PRETRAIN_ARGS
from tests.test_pretrain import corpus  # noqa: F401  (the fixture: a text)
from tests.test_pretrain import run_stage as run_pretraining
from tests.test_sft import chat_files  # noqa: F401  (the fixture: 80 training and 8 held-out chats)

WEIGHT_TOL = 1e-4


def shares_held(stdout: str, what: str) -> list[float]:
    """The share of the parameters each process said it holds, by rank (under DDP none says anything). Read by
    pattern: the two processes' lines may share a line of the captured output."""
    said = re.findall(rf"fsdp: process (\d) of 2 holds ([\d,]+) of the ([\d,]+) parameters of the {what}", stdout)
    return [int(held.replace(",", "")) / int(total.replace(",", "")) for _, held, total in sorted(said)]


HALVES = pytest.approx([0.5, 0.5], abs=0.01)


def distributed_type(artifact) -> tuple[str, int, str]:
    record = launch_record(artifact)
    return record["distributed_type"], record["num_processes"], record["backend"]


def same_weights(artifact, reference) -> None:
    """Both artifacts load with plain transformers, and every tensor agrees."""
    from transformers import AutoModelForCausalLM

    mine = AutoModelForCausalLM.from_pretrained(artifact).state_dict()
    theirs = AutoModelForCausalLM.from_pretrained(reference).state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=WEIGHT_TOL, msg=name)


@pytest.mark.slow
def test_pretraining_sharded_on_two_processes_matches_one_process_through_a_kill_and_resume(tmp_path, corpus):  # noqa: F811
    # 1 process x 2 accumulation steps x 8 sequences against 2 processes x 1 x 8, 12 steps. The sharded run is
    # stopped after step 8 (every process, as Ctrl-C) and resumed from its step-6 checkpoint: the full state the
    # main process gathered from both shards, loaded back into shards. A resume that lost the optimizer's state or
    # the data position would leave the one-process trajectory after step 6.
    args = [*PRETRAIN_ARGS, "train.max_steps=12", "train.eval_every=6", "train.log_every=3", "train.checkpoint_every=6",
            f"train.data={corpus}"]
    assert run_pretraining(tmp_path, "one", *args[len(PRETRAIN_ARGS):]) == 0
    fsdp = [*args, f"run.out_dir={tmp_path}", "run.name=fsdp"]
    killed = launch("stages.pretrain", fsdp, config="cpu_fsdp.yaml", env={"RLHF_STOP_AFTER_STEP": "8"}, check=False)
    two = tmp_path / "fsdp" / "pretrain"
    assert killed.returncode != 0 and not two.exists(), killed.stdout[-2000:]
    proc = launch("stages.pretrain", fsdp, config="cpu_fsdp.yaml")
    assert "resuming from step 6" in proc.stdout and shares_held(proc.stdout, "model") == HALVES, proc.stdout[-2000:]
    one = tmp_path / "one" / "pretrain"
    for key in ("train_loss", "val_loss"):  # within 1e-4 at every logged step, before and after the resume
        same_trajectory(one, two, key)
    same_weights(two, one)
    assert distributed_type(two) == ("FSDP", 2, "gloo")


@pytest.mark.slow
def test_sft_sharded_on_two_processes_matches_one_process_through_a_kill_and_resume(tmp_path, tiny_lm_dir, chat_files):  # noqa: F811
    from stages.sft.stage import main

    train, val = chat_files
    args = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", f"sft.init_from={tiny_lm_dir}",
            f"sft.data={train}", f"sft.val_data={val}", "sft.max_steps=8", "sft.sequences_per_step=8",
            "sft.batch_size=8", "sft.eval_every=4", "sft.log_every=1", "sft.save_every=4", "sft.gold_prompts=2",
            "sft.num_samples=0", "sft.max_new_tokens=8", "sft.lr=0.003", "sft.warmup_ratio=0"]
    assert main([*args, "run.name=one"]) == 0
    # stopped after step 6 and resumed from the checkpoint of step 4, both sharded
    killed = launch("stages.sft", [*args, "run.name=fsdp"], config="cpu_fsdp.yaml", env={"RLHF_STOP_AFTER_STEP": "6"},
                    check=False)
    assert killed.returncode != 0 and (tmp_path / "fsdp" / "sft.partial" / "checkpoints" / "checkpoint-4").is_dir()
    proc = launch("stages.sft", [*args, "run.name=fsdp"], config="cpu_fsdp.yaml")
    assert "resuming from" in proc.stdout and shares_held(proc.stdout, "model") == HALVES, proc.stdout[-2000:]
    one, two = tmp_path / "one" / "sft", tmp_path / "fsdp" / "sft"
    for key in ("loss", "grad_norm", "eval_loss"):  # within 1e-4 at every step, as DDP's
        same_trajectory(one, two, key)
    same_weights(two, one)
    assert distributed_type(two) == ("FSDP", 2, "gloo")


@pytest.mark.slow
def test_ppo_sharded_on_two_processes_matches_ddp_on_two(run_dir):  # noqa: F811
    """Each process samples its own episodes (seed + rank), so PPO on 2 processes is compared with DDP on 2: the
    same prompts and seeds on each process, so the same rollouts as long as the weights agree."""
    runs, printed = {}, {}
    for config in ("cpu_ddp", "cpu_fsdp"):  # both from the SFT and reward models of run "t"
        printed[config] = launch("stages.ppo", ppo_argv(run_dir), config=f"{config}.yaml").stdout
        runs[config] = (run_dir / "runs" / "t" / "ppo").rename(run_dir / config)
    # sharded against unsharded: FSDP's processes held half of each network, DDP's the whole of it
    assert shares_held(printed["cpu_fsdp"], "policy and value") == HALVES, printed["cpu_fsdp"][-2000:]
    assert shares_held(printed["cpu_ddp"], "policy and value") == []
    assert distributed_type(runs["cpu_fsdp"]) == ("FSDP", 2, "gloo")
    assert distributed_type(runs["cpu_ddp"]) == ("MULTI_CPU", 2, "gloo")
    for key in ("score", "kl", "loss/policy", "loss/value", "eval/score"):
        same_trajectory(runs["cpu_ddp"], runs["cpu_fsdp"], key)  # asserts: the same steps, values within 1e-4
    same_weights(runs["cpu_fsdp"], runs["cpu_ddp"])  # asserts: loads with plain transformers, every tensor within 1e-4


def test_make_shard_fsdp_launches_with_the_fsdp_config_for_this_machine():
    out = make_dry_run("sft", "NPROC=2", "SHARD=fsdp").stdout
    assert "--config_file configs/accelerate/cpu_fsdp.yaml --num_processes 2" in out and "-m stages.sft" in out
    bad = make_dry_run("sft", "NPROC=2", "SHARD=zero3")
    assert bad.returncode != 0 and "SHARD=zero3: the one sharded backend here is SHARD=fsdp" in bad.stderr
