"""The sampling stages under `accelerate launch`: rank and eval on 2 gloo processes share out their prompts
and write the artifact one process writes, answer for answer, for the same seed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_fixtures import fake_run, lively_copy, prompt_files

from pipeline.judge.answering import Sampling, answer, logprobs_under
from pipeline.runtime.processes import Processes
from tests.conftest import ROOT

CONFIG = str(ROOT / "configs" / "test.yaml")


def launch(module: str, args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """`python -m module args` under `accelerate launch` with `processes` CPU processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RLHF_DEBUG": "1"}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           "configs/accelerate/cpu_ddp.yaml", "--num_processes", str(processes), "-m", module, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def lines(path: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in path.read_text().splitlines()]


def report(path: Path, drop: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}


@pytest.fixture
def one_thread(monkeypatch):
    """The in-process reference runs on one thread, as each launched process does (float sums depend on it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy(tiny_lm_dir, tmp_path_factory):
    """A tiny model with weights large enough to say varied things (a rank needs distinct answers)."""
    return lively_copy(tiny_lm_dir, tmp_path_factory.mktemp("policy") / "m", seed=3)


def test_every_answer_is_its_own_prompts_whatever_shares_its_batch(policy):
    """The unit of sharding may change a prompt's neighbours, never its answer: each prompt draws from its
    own seeded generator, and log-probabilities come out the same when computed apart."""
    from transformers import AutoTokenizer

    from pipeline.lm.model import load_causal_lm

    model, tok = load_causal_lm(str(policy), dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(policy)
    prompts = [[{"role": "user", "content": f"What does function number {i} do?"}] for i in range(5)]
    sampling = Sampling(temperature=1.0, max_new_tokens=8, seed=4, batch_size=5)
    together = answer(model, tok, prompts, sampling, name="m")
    apart = answer(model, tok, prompts, Sampling(temperature=1.0, max_new_tokens=8, seed=4, batch_size=1), name="m")
    assert together.answer_ids == apart.answer_ids
    assert len(set(map(tuple, together.answer_ids))) > 1  # varied answers: the seeds differ per prompt
    for a, b in zip(together.logprobs, apart.logprobs):
        assert a == pytest.approx(b, abs=1e-4)
    assert logprobs_under(model, tok, together, sampling, Processes()) == together.logprobs  # same batches, same bits
    other = answer(model, tok, prompts, Sampling(temperature=1.0, max_new_tokens=8, seed=5, batch_size=5), name="m")
    assert other.answer_ids != together.answer_ids  # the seed decides


@pytest.mark.slow  # a launch of two processes (torch, transformers): ~35 s on busy cores
def test_rank_on_two_processes_writes_the_candidates_and_rankings_of_one(policy, tmp_path, one_thread):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What does f{i} do?", "gold": f"Return item {i}."}) + "\n"
                               for i in range(5)))
    held = tmp_path / "h.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Explain g{i}", "gold": f"Return {i}."}) + "\n" for i in range(3)))

    def argv(name):  # 3 chunks of 2 prompts: process 0 takes chunks 0 and 2, process 1 chunk 1
        return ["--config", CONFIG, f"run.out_dir={tmp_path}", f"run.name={name}", f"rank.policy={policy}",
                f"rank.prompts={prompts}", f"rank.heldout_prompts={held}", "rank.chunk_prompts=2",
                "rank.max_new_tokens=8", "rank.batch_size=2", "run.round=1"]

    from stages.rank.stage import main

    assert main(argv("one")) == 0
    launch("stages.rank", argv("two"))
    one, two = tmp_path / "one" / "rank", tmp_path / "two" / "rank"
    assert lines(two / "candidates.jsonl") == lines(one / "candidates.jsonl")
    assert len(lines(one / "candidates.jsonl")) >= 3  # most prompts had distinct answers to rank
    for name in ("rankings.jsonl", "heldout_rankings.jsonl"):
        assert lines(two / name, drop=("time",)) == lines(one / name, drop=("time",))
    assert lines(two / "heldout_candidates.jsonl") == lines(one / "heldout_candidates.jsonl")
    timing = ("sampling_s", "wall_time_s", "run")
    assert report(two / "report.json", timing) == report(one / "report.json", timing)
    assert not (tmp_path / "two" / "rank.partial").exists()


@pytest.mark.slow  # a launch of two processes (torch, transformers): ~35 s on busy cores
def test_eval_on_two_processes_writes_the_answers_and_report_of_one(tiny_lm_dir, tmp_path, one_thread):
    runs = fake_run(tmp_path, tiny_lm_dir)
    shutil.copytree(runs, tmp_path / "runs-two")  # the same models: this process keeps the first run's lock
    prompts, text = prompt_files(tmp_path)
    # 6 prompts in batches of 4: 2 batches, one per process; 3 models, the KL under each baseline
    args = ["--config", CONFIG, f"eval.prompts={prompts}", f"eval.lm_data={text}", "eval.batch_size=4",
            "eval.temperature=1.0", "run.name=fx"]

    from stages.eval.stage import main

    main([*args, f"run.out_dir={runs}"])
    launch("stages.eval", [*args, f"run.out_dir={tmp_path / 'runs-two'}"])
    one, two = runs / "fx" / "eval", tmp_path / "runs-two" / "fx" / "eval"
    assert (two / "answers.jsonl").read_text() == (one / "answers.jsonl").read_text()
    for name in ("report.json", "report.md"):  # the same report, but for where the models lie
        assert (two / name).read_text().replace(str(tmp_path / "runs-two"), str(runs)) == (one / name).read_text()


@pytest.mark.slow  # a launch of two processes (torch, transformers): ~35 s on busy cores
def test_compare_on_two_processes_writes_the_report_of_one(tiny_lm_dir, tmp_path, one_thread):
    runs = fake_run(tmp_path, tiny_lm_dir)
    shutil.copytree(runs, tmp_path / "runs-two")
    prompts, _ = prompt_files(tmp_path)
    # 6 prompts in batches of 4, best of 2 (12 answers, 3 batches): every sampling step is shared out
    args = ["--config", CONFIG, f"eval.prompts={prompts}", "eval.batch_size=4", "eval.temperature=1.0",
            "compare.best_of_n=2", "run.name=fx"]

    from stages.compare.stage import main

    assert main([*args, f"run.out_dir={runs}"]) == 0
    proc = launch("stages.compare", [*args, f"run.out_dir={tmp_path / 'runs-two'}"])
    assert "best of 2" in proc.stdout
    one, two = runs / "fx" / "compare", tmp_path / "runs-two" / "fx" / "compare"

    def report_of(d):  # the same report, but for where the models lie and how long the sampling took
        r = json.loads((d / "compare.json").read_text().replace(str(tmp_path / "runs-two"), str(runs)))
        for row in r["methods"]:
            if "best_of_n" in row:
                row["cost"].pop("wall_time_s")
        return r

    assert report_of(two) == report_of(one)
    assert [row["candidate"] for row in report_of(one)["methods"]] == ["ppo", "best-of-2"]
    assert report_of(one)["methods"][0]["kl"]["k1_mean"] != 0  # the KL under SFT was measured, not skipped
    assert json.loads((two / "manifest.json").read_text())["launch"]["num_processes"] == 2
