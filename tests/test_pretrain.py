"""The pretraining stage end to end on a small text file: the loss falls, the artifact is a plain Hugging Face
model, a killed run resumes to the same result, 2 DDP processes match 1, and bad input fails cleanly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.artifacts.metrics import read_metrics
from pipeline.config.schema import ModelSection
from pipeline.lm.forward import NextTokenLoss
from pipeline.lm.model import build_model
from stages.pretrain.stage import main
from tests.conftest import ROOT, tiny_text

# 2 layers, 40 steps of 2 x 8 sequences of 32 tokens (gradient accumulation 2): a few seconds on a CPU.
ARGS = ["--config", "configs/test.yaml", "model.block_size=32", "train.batch_size=8", "train.tokens_per_step=512",
        "train.max_steps=40", "train.warmup_steps=4", "train.lr=0.003", "train.eval_every=10", "train.log_every=5",
        "train.checkpoint_every=10", "train.eval_batches=4", "train.sample_temperatures=[0.0,0.8]"]


def run_stage(tmp_path, name, *extra, env=None):
    """Run the stage in this process; returns its exit code (0 on success)."""
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return main([*ARGS, f"run.out_dir={tmp_path}", f"run.name={name}", *extra]) or 0
    except SystemExit as e:
        return e.code
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "plays.txt"
    path.write_text(tiny_text(60_000))
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("runs")
    assert run_stage(out, "whole", f"train.data={corpus}") == 0
    return out / "whole" / "pretrain"


def val_losses(artifact: Path) -> list[float]:
    return [r["val_loss"] for r in read_metrics(artifact) if "val_loss" in r]


def manifest(artifact: Path) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


@pytest.mark.parametrize("n_kv_head", [None, 1])
def test_the_lean_training_forward_computes_what_the_hf_model_computes(tiny_lm_dir, n_kv_head):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = build_model(ModelSection(n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32, block_size=16), tok)
    ids = torch.randint(0, len(tok), (3, 17))
    lean = NextTokenLoss(model)
    assert lean.lean
    hf_loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1].clone()).loss  # HF shifts labels itself
    ours = NextTokenLoss(model)(ids[:, :-1][:, :-1], ids[:, :-1][:, 1:])
    torch.testing.assert_close(ours, hf_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lean.logits(ids), model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    # ... and the same gradients (the lean path has its own RMSNorm backward)
    hf_grads = torch.autograd.grad(hf_loss, list(model.parameters()))
    our_grads = torch.autograd.grad(ours, list(model.parameters()))
    for theirs, mine in zip(hf_grads, our_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_pretraining_lowers_the_validation_loss(uninterrupted):
    losses = val_losses(uninterrupted)
    assert len(losses) == 4  # every 10 steps
    assert losses[-1] < losses[0] - 0.3
    m = manifest(uninterrupted)["metrics"]
    assert m["val_loss"] == pytest.approx(losses[-1], abs=1e-5)
    assert m["tokens_seen"] == 40 * 512 and m["val_bpb"] > 0 and m["val_ppl"] > 1
    train = [r for r in read_metrics(uninterrupted) if "train_loss" in r]
    assert train[0]["tokens_per_s"] > 0 and train[-1]["step"] == 40


def test_the_artifact_is_a_plain_hugging_face_model_with_samples_and_manifest(uninterrupted, corpus):
    model = AutoModelForCausalLM.from_pretrained(uninterrupted)
    tok = AutoTokenizer.from_pretrained(uninterrupted)
    assert model.config.model_type == "llama" and model.config.eos_token_id == tok.eos_token_id
    assert tok.chat_template and "{% generation %}" in tok.chat_template
    ids = tok("ROMEO:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= ids["input_ids"].shape[1] + 5
    samples = (uninterrupted / "samples.md").read_text()
    assert "temperature 0.0" in samples and "temperature 0.8" in samples
    m = manifest(uninterrupted)
    assert m["stage"] == "pretrain" and m["config"]["model"]["block_size"] == 32
    assert list(m["inputs"]["data"]) == [str(corpus)]
    assert (uninterrupted / "metrics.jsonl").is_file() and (uninterrupted / "tb").is_dir()
    assert not uninterrupted.with_name("pretrain.partial").exists()


def test_a_finished_stage_is_up_to_date_until_its_config_or_data_changes(uninterrupted, corpus, capsys):
    out, name = uninterrupted.parents[1], uninterrupted.parent.name
    before = manifest(uninterrupted)["created"], (uninterrupted / "model.safetensors").stat().st_mtime_ns
    assert run_stage(out, name, f"train.data={corpus}", "train.log_every=10") == 0  # logging changes nothing
    assert "up to date" in capsys.readouterr().out
    assert (manifest(uninterrupted)["created"], (uninterrupted / "model.safetensors").stat().st_mtime_ns) == before


def test_a_killed_run_resumes_to_the_same_final_loss(tmp_path, uninterrupted, corpus):
    # Stopped after step 14 (between the checkpoints at 10 and 20): nothing is committed ...
    code = run_stage(tmp_path, "killed", f"train.data={corpus}", env={"RLHF_STOP_AFTER_STEP": "14"})
    assert code == 130
    final = tmp_path / "killed" / "pretrain"
    assert not final.exists() and (final.with_name("pretrain.partial") / "checkpoints" / "latest.pt").is_file()
    # ... and the same command continues from step 10 with the same batches and learning rates.
    assert run_stage(tmp_path, "killed", f"train.data={corpus}") == 0
    assert val_losses(final) == pytest.approx(val_losses(uninterrupted), abs=1e-6)
    assert manifest(final)["metrics"]["start_step"] == 10
    steps = [r["step"] for r in read_metrics(final) if "train_loss" in r]
    assert steps == sorted(set(steps))  # metrics.jsonl reads as one run


def test_two_ddp_processes_give_the_same_loss_as_one(tmp_path, uninterrupted, corpus):
    # The reference ran 1 process x 2 accumulation steps x 8 sequences; here 2 processes x 1 x 8.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RLHF_DEBUG": "1"}
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--config_file", "configs/accelerate/cpu_ddp.yaml", "-m", "stages.pretrain",
           *ARGS, f"run.out_dir={tmp_path}", "run.name=ddp", f"train.data={corpus}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 per micro-batch x 2 processes x 1 accumulation steps" in proc.stdout + proc.stderr
    assert val_losses(tmp_path / "ddp" / "pretrain") == pytest.approx(val_losses(uninterrupted), abs=1e-4)


@pytest.mark.parametrize("make_input, words", [
    (lambda d: d / "missing.txt", "does not exist"),
    (lambda d: (d / "empty.txt").write_text("") and d / "empty.txt" or d / "empty.txt", "no text"),
    (lambda d: (d / "blob.txt").write_bytes(bytes(range(256)) * 50) and d / "blob.txt", "blob.txt"),
    (lambda d: (d / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n') and d / "bad.jsonl", "line 2"),
])
def test_bad_data_fails_with_a_clear_message_and_no_artifact(tmp_path, capsys, make_input, words):
    path = make_input(tmp_path)
    assert run_stage(tmp_path, "bad", f"train.data={path}") == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "bad" / "pretrain").exists()


def test_an_impossible_model_shape_exits_2_before_any_work(tmp_path, corpus, capsys):
    assert run_stage(tmp_path, "shape", f"train.data={corpus}", "model.n_head=3") == 2
    err = capsys.readouterr().err
    assert "not divisible" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())
