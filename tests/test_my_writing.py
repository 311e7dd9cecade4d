"""The my-writing preset end to end on tinyshakespeare (Python's docs without ../shared): pretraining with
either vocabulary also fits the bigram baseline and writes samples of both with the temperature sweep;
evaluation puts the bigram first; the chat continues text with no chat template. Overrides shrink
the model and the steps so that each run takes seconds; the preset's own time is in the README."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from apps.chat import main as chat_main
from stages.eval.stage import main as eval_main
from stages.pretrain.stage import main as pretrain_main
from tests.conftest import SHAKESPEARE, tiny_text

SMALL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=8", "train.tokens_per_step=256",
         "train.max_steps=20", "train.warmup_steps=2", "train.eval_every=10", "train.checkpoint_every=10",
         "train.sample_tokens=16", "tokenizer.vocab_size=1024", "eval.lm_max_tokens=2000", "eval.max_new_tokens=16"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if SHAKESPEARE.exists():
        return SHAKESPEARE
    path = tmp_path_factory.mktemp("text") / "writing.txt"
    path.write_text(tiny_text(300_000))
    return path


@pytest.fixture(scope="module", params=["bpe", "word"])
def run(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"my-writing-{request.param}")
    args = ["--config", "configs/my-writing.yaml", *SMALL, f"run.out_dir={out}", f"train.data=[{corpus}]",
            f"tokenizer.kind={request.param}"]
    assert (pretrain_main(args) or 0) == 0
    assert (eval_main(args) or 0) == 0
    return request.param, out / "my-writing", args


def test_pretraining_reports_the_bigram_beside_the_gpt(run):
    kind, run_dir, _ = run
    metrics = json.loads((run_dir / "pretrain" / "manifest.json").read_text())["metrics"]
    assert metrics["bigram_val_bpb"] > 0 and metrics["val_bpb"] > 0
    # 20 steps of a 1-layer model learn less than counting pairs does
    assert metrics["bigram_val_bpb"] < metrics["val_bpb"]
    if kind == "word":
        assert 0 < metrics["val_unknown_tokens"] < metrics["val_tokens"]
    else:
        assert "val_unknown_tokens" not in metrics  # byte-level BPE has no unknown token
    AutoModelForCausalLM.from_pretrained(run_dir / "pretrain")
    AutoTokenizer.from_pretrained(run_dir / "pretrain")


def test_samples_show_both_models_and_the_temperature_sweep(run):
    samples = (run[1] / "pretrain" / "samples.md").read_text()
    assert "*GPT:*" in samples and "*bigram:*" in samples
    for model in ("GPT", "bigram"):
        for t in ("0.2", "0.7", "1", "1.5"):
            assert f"| {model} | {t} |" in samples


def test_evaluation_puts_the_bigram_first_and_sweeps_temperature(run):
    kind, run_dir, _ = run
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["lm_data"]["source"] == "the held-out split of train.data"
    lm = report["lm_baseline"]["lm"]
    assert lm["tokens"] == report["models"]["pretrain"]["lm"]["tokens"]  # the same held-out tokens
    assert (lm["unknown_tokens"] or 0) > 0 if kind == "word" else lm["unknown_tokens"] is None
    assert list(report["temperature"]["sweeps"]) == ["bigram", "pretrain"]
    md = (run_dir / "eval" / "report.md").read_text()
    table = md.split("| model | loss (nats/token)")[1]
    assert table.split("\n")[2].startswith("| bigram")
    assert (run_dir / "eval" / "lm.png").is_file() and "Temperature: low T repeats" in md
    assert "*Skipped:* eval.prompts=none" in md


def test_chat_continues_text_without_a_chat_template(run, capsys):
    run_dir = run[1]
    chat_main(["--model", str(run_dir / "pretrain"), "--complete", "Once upon a time", "--temperature", "1.2",
               "--seed", "0", "--max-new-tokens", "12"])
    out = capsys.readouterr().out
    assert out.startswith("Once upon a time") and len(out.split()) > 4
    assert "<|assistant|>" not in out
