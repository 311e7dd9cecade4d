"""Fixtures for the eval and chat tests: tiny models with distinct random weights, a tiny reward
model, and a fake run directory (finished artifacts, metrics.jsonl files) laid out like runs/<name>/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification

QUESTIONS = [
    ("What does json.dumps do?", "Serialize obj to a JSON formatted str."),
    ("Explain textwrap.dedent", "Remove any common leading whitespace from every line in text."),
    ("What is os.getcwd for?", "Return a unicode string representing the current working directory."),
    ("How do I use math.sqrt?", "Return the square root of x."),
    ("What does len return?", "Return the number of items in a container."),
    ("Tell me about str.upper", "Return a copy of the string converted to uppercase."),
]


def lively_copy(src: Path, dst: Path, seed: int, std: float = 0.3, max_positions: int | None = None) -> Path:
    """The model at `src` with fresh random weights large enough to say varied things (a model at
    the usual init scale repeats one token), saved with its tokenizer to `dst`."""
    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    if max_positions:
        model.config.max_position_embeddings = max_positions
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def tiny_reward_model(src: Path, dst: Path, seed: int = 0) -> Path:
    """A sequence-classification model (one score) on the tokenizer of `src`, as the reward stage saves."""
    tok = AutoTokenizer.from_pretrained(src)
    config = AutoModelForCausalLM.from_pretrained(src).config
    config.num_labels = 1
    config.architectures = None
    torch.manual_seed(seed)
    rm = LlamaForSequenceClassification(config)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    rm.save_pretrained(dst)
    tok.save_pretrained(dst)
    (dst / "reward_model.json").write_text(json.dumps({"max_length": 96}))
    return dst


def mark_complete(d: Path, stage: str, metrics: dict | None = None) -> None:
    manifest = {"stage": stage, "status": "complete", "fingerprint": f"fx-{stage}", "metrics": metrics or {}}
    (d / "manifest.json").write_text(json.dumps(manifest))


def write_metrics(d: Path, rows: list[dict]) -> None:
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(root: Path, lm_dir: Path, with_reward: bool = True) -> Path:
    """runs/fx/{pretrain,sft,ppo[,reward]} with finished manifests and metrics; returns runs/."""
    runs = root / "runs"
    run = runs / "fx"
    for i, stage in enumerate(("pretrain", "sft", "ppo")):
        d = run / stage
        if i == 0:
            lively_copy(lm_dir, d, seed=11)
            bigram_of_questions(d)
        else:
            shutil.copytree(run / "sft" if stage == "ppo" else run / "pretrain", d)
            _nudge(d, seed=10 + i)
        mark_complete(d, stage)
    steps = range(0, 50, 10)
    write_metrics(run / "pretrain", [{"step": s, "train_loss": 5 - s / 20, "val_loss": 5.2 - s / 25} for s in steps])
    write_metrics(run / "sft", [{"step": s, "loss": 3 - s / 30, "eval_loss": 3.1 - s / 40} for s in steps])
    write_metrics(run / "ppo", [{"step": s, "score": s / 10, "gold": 0.3 - s / 500, "kl": s / 20} for s in steps])
    if with_reward:
        d = tiny_reward_model(lm_dir, run / "reward")
        mark_complete(d, "reward", {"heldout_accuracy": 0.81, "heldout_spearman": 0.64})
        write_metrics(d, [{"step": s, "loss": 0.7 - s / 100, "heldout_accuracy": 0.5 + s / 100} for s in steps])
    return runs


def bigram_of_questions(d: Path) -> None:
    """The bigram baseline a pretraining run saves beside its model, counted on the QUESTIONS text."""
    import numpy as np

    from pipeline.lm.bigram import BigramLM

    tok = AutoTokenizer.from_pretrained(d)
    ids = [t for q, g in QUESTIONS for t in tok(f"{q} {g}")["input_ids"] + [tok.eos_token_id]]
    BigramLM.fit(np.array(ids), len(tok), k=0.1).save(d)


def _nudge(d: Path, seed: int, std: float = 0.05) -> None:
    """Move a saved model's weights a little (a fine-tuned model stays near its start)."""
    model = AutoModelForCausalLM.from_pretrained(d)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * std)
    model.save_pretrained(d)


def prompt_files(root: Path, with_gold: bool = True) -> tuple[Path, Path]:
    """(eval prompts .jsonl, held-out text .jsonl) for eval.prompts and eval.lm_data."""
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, **({"gold": g} if with_gold else {})}) + "\n"
                               for q, g in QUESTIONS))
    text = root / "heldout.jsonl"
    text.write_text("".join(json.dumps({"text": f"{q} {g}"}) + "\n" for q, g in QUESTIONS))
    return prompts, text
