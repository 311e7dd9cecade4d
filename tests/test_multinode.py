"""Two "machines" on this one: two `accelerate launch` commands with --num_machines 2, one per machine rank,
meeting at 127.0.0.1 as two real machines meet at the first one's address (docs/scale-out.md gives the
commands). A short pretraining and a short PPO run across them, each writing one artifact that records 2
processes on 2 machines. Each node starts torch and transformers: slow."""

import json
import os
import subprocess
import sys

import pytest

from faults.distributed import free_port
from tests.conftest import ROOT, tiny_text
from tests.test_ppo_stage import argv as ppo_argv
from tests.test_ppo_stage import run_dir  # noqa: F401  (fixture: SFT and reward models, prompts)

PRETRAIN = ["--config", "configs/test.yaml", "model.block_size=32", "train.batch_size=8", "train.tokens_per_step=512",
            "train.max_steps=10", "train.warmup_steps=2", "train.eval_every=5", "train.log_every=5",
            "train.checkpoint_every=5", "train.eval_batches=2", "train.sample_temperatures=[0.0]"]


def on_two_machines(module: str, args: list[str], timeout: int = 600) -> str:
    """Run `python -m module args` as machine 0 and machine 1 of a 2-machine launch (one process each, gloo);
    returns both machines' output. Either failing fails the test with its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RLHF_DEBUG": "1"}
    common = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_ddp.yaml",
              "--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
              "--main_process_port", str(free_port())]
    nodes = [subprocess.Popen([*common, "--machine_rank", str(rank), "-m", module, *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=timeout)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"machine {rank} failed:\n{out[-4000:]}"
    return "\n".join(outputs)


def launch_record(artifact) -> dict:
    return json.loads((artifact / "manifest.json").read_text()).get("launch") or {}


@pytest.mark.slow
def test_pretraining_runs_across_two_machines(tmp_path):
    corpus = tmp_path / "plays.txt"
    corpus.write_text(tiny_text(30_000))
    out = on_two_machines("stages.pretrain", [*PRETRAIN, f"run.out_dir={tmp_path}", "run.name=two",
                                              f"train.data={corpus}"])
    assert "8 per micro-batch x 2 processes x 1 accumulation steps" in out  # the preset's global batch, split
    artifact = tmp_path / "two" / "pretrain"
    launch = launch_record(artifact)
    assert (launch.get("num_processes"), launch.get("num_machines"), launch.get("backend")) == (2, 2, "gloo")
    steps = [json.loads(line)["step"] for line in (artifact / "metrics.jsonl").read_text().splitlines()
             if "train_loss" in line]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # one writer: the main process of machine 0


@pytest.mark.slow
def test_ppo_runs_across_two_machines(run_dir):  # noqa: F811
    out = on_two_machines("stages.ppo", ppo_argv(run_dir, "ppo.num_minibatches=2"))
    assert "16 episodes per rollout (8 per process x 2 processes)" in out
    artifact = run_dir / "runs" / "t" / "ppo"
    launch = launch_record(artifact)
    assert (launch.get("num_processes"), launch.get("num_machines"), launch.get("backend")) == (2, 2, "gloo")
    report = json.loads((artifact / "report.json").read_text())
    assert report  # the main process judged and wrote the development report
