"""The bad-inputs corpus: every command a user runs (each stage, the demo data builder, the chat, the
server, the reward-model measure), fed broken inputs.

Each case runs the entry point's `main(argv)` in-process, behind the same `main_guard` the command
line uses, and must: exit non-zero; print exactly one line with "error:" and no traceback; name
what is wrong in that line; and leave no committed artifact. (An empty `<stage>.partial/` left by
some failures is the shared artifact code's to clean up; it is not judged here.)

Run alone with `make faults` or `pytest tests/test_bad_inputs.py`.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_text
from tests.stage_fixtures import fixed_reward_stats

# case stage -> (the command a user types after `python -m`, the module whose main(argv) runs it
# in-process, the artifact folder under runs/<name>/ it must not commit)
ENTRY = {
    "pretrain": ("stages.pretrain", "stages.pretrain.stage", "pretrain"),
    "sft": ("stages.sft", "stages.sft.stage", "sft"),
    "rank": ("stages.rank", "stages.rank.stage", "rank"),
    "reward": ("stages.reward", "stages.reward.stage", "reward"),
    "reward-stats": ("stages.reward.stats", "stages.reward.statistics", "reward-stats"),
    "ppo": ("stages.ppo", "stages.ppo.stage", "ppo"),
    "align": ("stages.align", "stages.align.stage", "dpo"),
    "eval": ("stages.eval", "stages.eval.stage", "eval"),
    "compare": ("stages.compare", "stages.compare.stage", "compare"),
    "data": ("data.demo", "data.demo", "data"),
    "chat": ("apps.chat", "apps.chat", None),
    "serve": ("apps.serve", "apps.serve.__main__", None),
    "own-answers": ("stages.reward.own_answers", "stages.reward.own_answers", None),
    "summary": ("stages.eval.summary", "stages.eval.summary", None),
    "clean": ("pipeline.chain.clean", "pipeline.chain.clean", None),
}
# Commands that take no config overrides of a stage: their arguments are their own.
OWN_ARGUMENTS = {"chat", "serve", "own-answers"}
# Runnable modules that are not a user's command, and why they are not in the corpus.
NOT_USER_COMMANDS = {
    "pipeline.chain.plan": "make's helper: with a bad config it still prints the plan (exit 0) and the stage make "
                           "runs next reports the error, a case of that stage's",
    "pipeline.config.docs": "writes docs/config.md from the schema for developers; it reads no user input",
}

# Valid settings per stage: each case changes one thing. Paths: {lm} a tiny chat LM folder, {rm} a
# tiny reward model folder, {d} the data folder, {bad} the folder of broken models.
VALID = {
    "pretrain": ["train.data={d}/good.txt", "tokenizer.vocab_size=300", "train.max_steps=2", "train.eval_every=1",
                 "train.checkpoint_every=1", "train.sample_tokens=2", "train.sample_temperatures=[0.0]"],
    "sft": ["sft.init_from={lm}", "sft.data={d}/sft.jsonl", "sft.val_data={d}/sft.jsonl", "sft.max_steps=1",
            "sft.num_samples=1", "sft.gold_prompts=1", "sft.max_new_tokens=2"],
    "reward": ["reward.init_from={lm}", "reward.data={d}/pairs.jsonl", "reward.val_data={d}/pairs.jsonl",
               "reward.max_steps=1"],
    "ppo": ["ppo.policy={lm}", "ppo.reward_model={rm}", "ppo.data={d}/prompts.jsonl",
            "ppo.eval_data={d}/prompts.jsonl", "ppo.total_episodes=4", "ppo.batch_size=4", "ppo.num_minibatches=1",
            "ppo.max_new_tokens=2", "ppo.report_prompts=2", "ppo.report_samples=1", "ppo.num_eval_prompts=2"],
    "eval": ["eval.models=[{lm}]", "eval.prompts={d}/prompts.jsonl", "eval.lm_data=none", "eval.reward_model=none",
             "eval.num_prompts=2", "eval.max_new_tokens=2"],
    "data": ["data.dir={d}/demo_out"],
    "chat": ["--model", "{lm}", "--prompt", "Hi", "--max-new-tokens", "2"],
    "rank": ["rank.policy={lm}", "rank.prompts={d}/prompts.jsonl", "rank.heldout_prompts=none", "rank.num_prompts=2",
             "rank.k=2", "rank.max_new_tokens=2"],
    "reward-stats": ["ppo.policy={lm}", "ppo.reward_model={rm}", "ppo.data={d}/prompts.jsonl", "ppo.max_new_tokens=2",
                     "reward.stats_prompts=2"],
    "align": ["align.method=dpo", "dpo.policy={lm}", "dpo.data={d}/pairs.jsonl", "dpo.val_data={d}/pairs.jsonl",
              "dpo.max_steps=1", "dpo.report_prompts=1", "dpo.max_new_tokens=2"],
    "compare": ["eval.prompts={d}/prompts.jsonl", "eval.num_prompts=2", "eval.max_new_tokens=2"],
    # serve binds before it loads: port 0 is any free port, so a case that failed to fail would serve
    "serve": ["--model", "{lm}", "--port", "0", "--max-tokens", "2"],
    "own-answers": ["--batch-size", "2"],
    "summary": [],
    "clean": [],
}

# (case id, stage, arguments after the valid ones, words the error line must contain)
CASES = [
    # ---- config values: wrong types, nan, negative, zero, unknown keys
    ("train-batch-size-zero", "pretrain", ["train.batch_size=0"], ["train.batch_size", "> 0"]),
    ("train-lr-negative", "pretrain", ["train.lr=-1"], ["train.lr", "> 0"]),
    ("train-lr-nan", "pretrain", ["train.lr=nan"], ["train.lr", "finite"]),
    ("train-lr-abc", "pretrain", ["train.lr=abc"], ["train.lr", "number"]),
    ("train-max-steps-negative", "pretrain", ["train.max_steps=-5"], ["train.max_steps", "> 0"]),
    ("train-unknown-key", "pretrain", ["train.learning_rate=0.1"], ["train.learning_rate", "unknown"]),
    ("model-n-head-zero", "pretrain", ["model.n_head=0"], ["model.n_head", "> 0"]),
    ("model-dropout-one", "pretrain", ["model.dropout=1"], ["model.dropout", "[0, 1)"]),
    ("sft-epochs-nan", "sft", ["sft.epochs=nan"], ["sft.epochs", "finite"]),
    ("sft-batch-size-abc", "sft", ["sft.batch_size=abc"], ["sft.batch_size", "integer"]),
    ("sft-max-steps-zero", "sft", ["sft.max_steps=0"], ["sft.max_steps", "-1"]),
    ("sft-unknown-lora-key", "sft", ["sft.lora.rank=8"], ["sft.lora.rank", "unknown"]),
    ("reward-lr-abc", "reward", ["reward.lr=abc"], ["reward.lr", "number"]),
    ("reward-epochs-zero", "reward", ["reward.epochs=0"], ["reward.epochs", "> 0"]),
    ("ppo-batch-size-zero", "ppo", ["ppo.batch_size=0"], ["ppo.batch_size", "> 0"]),
    ("ppo-kl-coef-nan", "ppo", ["ppo.kl_coef=nan"], ["ppo.kl_coef", "finite"]),
    ("ppo-kl-coef-negative", "ppo", ["ppo.kl_coef=-0.1"], ["ppo.kl_coef", ">= 0"]),
    ("ppo-temperature-zero", "ppo", ["ppo.temperature=0"], ["ppo.temperature", "> 0"]),
    ("ppo-unknown-section", "ppo", ["ppo2.lr=1"], ["ppo2", "unknown"]),
    ("eval-top-p-zero", "eval", ["eval.top_p=0"], ["eval.top_p", "(0, 1]"]),
    ("eval-num-prompts-negative", "eval", ["eval.num_prompts=-3"], ["eval.num_prompts", "> 0"]),
    ("data-k-abc", "data", ["data.k=abc"], ["data.k", "integer"]),
    ("data-val-docs-nan", "data", ["data.val_docs=nan"], ["data.val_docs", "finite"]),
    ("override-without-value", "data", ["data.k"], ["data.k", "key.sub=value"]),
    ("data-dir-is-a-users-file", "data", ["data.dir={d}/notes.txt"], ["data.dir", "notes.txt", "existing file"]),
    ("data-dir-is-a-users-folder", "data", ["data.dir={d}/thesis"], ["data.dir", "thesis", "did not make"]),
    # ---- the preset file itself
    ("config-binary", "pretrain", ["--config", "{d}/binary.bin"], ["binary.bin", "not a text file"]),
    ("config-empty", "sft", ["--config", "{d}/empty.yaml"], ["empty.yaml", "empty"]),
    ("config-not-yaml", "reward", ["--config", "{d}/broken.yaml"], ["broken.yaml", "not valid YAML"]),
    ("config-a-list", "ppo", ["--config", "{d}/list.yaml"], ["list.yaml", "mapping"]),
    ("config-missing", "eval", ["--config", "{d}/nope.yaml"], ["nope.yaml", "does not exist"]),
    ("config-bad-value-in-file", "data", ["--config", "{d}/zero_heads.yaml"], ["zero_heads.yaml", "model.n_head"]),
    ("config-unknown-key-in-file", "eval", ["--config", "{d}/typo.yaml"], ["typo.yaml", "eval.num_prompt"]),
    # ---- model and tokenizer folders
    ("sft-init-truncated-weights", "sft", ["sft.init_from={bad}/truncated"], ["model.safetensors", "truncated"]),
    ("sft-init-empty-weights", "sft", ["sft.init_from={bad}/empty_weights"], ["model.safetensors", "empty"]),
    ("sft-init-no-config", "sft", ["sft.init_from={bad}/no_config"], ["no_config", "config.json"]),
    ("sft-init-corrupt-config", "sft", ["sft.init_from={bad}/corrupt_config"], ["config.json", "corrupt"]),
    ("sft-init-no-tokenizer", "sft", ["sft.init_from={bad}/no_tokenizer"], ["no_tokenizer", "tokenizer.json"]),
    ("sft-init-corrupt-manifest", "sft", ["sft.init_from={bad}/corrupt_manifest"], ["manifest.json"]),
    ("reward-init-truncated-weights", "reward", ["reward.init_from={bad}/truncated"], ["model.safetensors"]),
    ("reward-init-no-tokenizer", "reward", ["reward.init_from={bad}/no_tokenizer"], ["tokenizer.json"]),
    ("pretrain-tokenizer-from-no-tokenizer", "pretrain", ["tokenizer.from={bad}/no_tokenizer"], ["tokenizer.json"]),
    ("pretrain-tokenizer-from-a-file", "pretrain", ["tokenizer.from={lm}/tokenizer.json"],
     ["tokenizer.json", "is a file"]),
    ("pretrain-out-dir-is-a-file", "pretrain", ["run.out_dir={d}/good.txt"], ["run.out_dir", "existing file"]),
    ("pretrain-init-empty-weights", "pretrain", ["model.init_from={bad}/empty_weights"], ["model.safetensors"]),
    ("ppo-policy-truncated-weights", "ppo", ["ppo.policy={bad}/truncated"], ["model.safetensors", "truncated"]),
    ("ppo-reward-model-is-causal-lm", "ppo", ["ppo.reward_model={lm}"], ["score head", "reward model"]),
    ("ppo-reward-model-truncated", "ppo", ["ppo.reward_model={bad}/rm_truncated"], ["model.safetensors"]),
    ("ppo-policy-corrupt-manifest", "ppo", ["ppo.policy={bad}/corrupt_manifest"], ["manifest.json"]),
    ("eval-reward-model-is-causal-lm", "eval", ["eval.reward_model={lm}"], ["score head", "reward model"]),
    ("eval-model-truncated-weights", "eval", ["eval.models=[{bad}/truncated]"], ["model.safetensors"]),
    ("eval-model-no-tokenizer", "eval", ["eval.models=[{bad}/no_tokenizer]"], ["tokenizer.json"]),
    ("chat-truncated-weights", "chat", ["--model", "{bad}/truncated"], ["model.safetensors", "truncated"]),
    ("chat-empty-weights", "chat", ["--model", "{bad}/empty_weights"], ["model.safetensors", "empty"]),
    ("chat-no-config", "chat", ["--model", "{bad}/no_config"], ["config.json"]),
    ("chat-no-tokenizer", "chat", ["--model", "{bad}/no_tokenizer"], ["tokenizer.json"]),
    ("chat-corrupt-tokenizer", "chat", ["--model", "{bad}/corrupt_tokenizer"], ["tokenizer.json", "corrupt"]),
    ("eval-model-corrupt-config", "eval", ["eval.models=[{bad}/corrupt_config]"], ["config.json", "corrupt"]),
    ("chat-missing-folder", "chat", ["--model", "{bad}/nothing_here"], ["nothing_here", "does not exist"]),
    ("chat-model-is-a-file", "chat", ["--model", "{d}/good.txt"], ["good.txt", "file"]),
    ("chat-temperature-abc", "chat", ["--temperature", "abc"], ["--temperature", "abc"]),
    ("chat-temperature-nan", "chat", ["--temperature", "nan"], ["--temperature", "nan"]),
    ("chat-top-p-zero", "chat", ["--top-p", "0"], ["--top-p"]),
    ("chat-max-new-tokens-zero", "chat", ["--max-new-tokens", "0"], ["--max-new-tokens"]),
    # ---- data files
    ("pretrain-binary-data", "pretrain", ["train.data={d}/binary.txt"], ["binary.txt", "binary"]),
    ("pretrain-not-utf8", "pretrain", ["train.data={d}/latin1.txt"], ["latin1.txt", "line 2", "UTF-8"]),
    ("pretrain-empty-file", "pretrain", ["train.data={d}/empty.txt"], ["empty.txt"]),
    ("pretrain-missing-file", "pretrain", ["train.data={d}/missing.txt"], ["missing.txt", "does not exist"]),
    ("pretrain-jsonl-without-text", "pretrain", ["train.data={d}/sft.jsonl"], ["sft.jsonl", "text field"]),
    ("pretrain-parquet-wrong-column", "pretrain", ["train.data={d}/wrong_column.parquet"],
     ["wrong_column.parquet", "text field"]),
    ("pretrain-corrupt-parquet", "pretrain", ["train.data={d}/corrupt.parquet"], ["corrupt.parquet", "Parquet"]),
    ("sft-wrong-fields", "sft", ["sft.data={d}/prompts.jsonl"], ["prompts.jsonl", "line 1", "no known SFT fields"]),
    ("sft-truncated-jsonl", "sft", ["sft.data={d}/truncated.jsonl"], ["truncated.jsonl", "line 3", "JSON"]),
    ("sft-csv-wrong-schema", "sft", ["sft.data={d}/wrong.csv"], ["wrong.csv", "line 2", "no known SFT fields"]),
    ("sft-empty-jsonl", "sft", ["sft.data={d}/empty.jsonl"], ["empty.jsonl", "no usable"]),
    ("sft-not-utf8", "sft", ["sft.data={d}/latin1.jsonl"], ["latin1.jsonl", "UTF-8"]),
    ("sft-huge-single-line", "sft", ["sft.data={d}/huge_line.jsonl"], ["huge_line.jsonl", "longer than 1 MiB"]),
    ("sft-wrong-types", "sft", ["sft.data={d}/wrong_types.jsonl"], ["wrong_types.jsonl", "line 1", "string"]),
    ("reward-duplicate-ranks", "reward", ["reward.data={d}/repeated_rank.jsonl"],
     ["repeated_rank.jsonl", "line 1", "repeats an index"]),
    ("reward-chosen-equals-rejected", "reward", ["reward.data={d}/same_pairs.jsonl"],
     ["same_pairs.jsonl", "chosen == rejected"]),
    ("reward-parquet-wrong-schema", "reward", ["reward.data={d}/wrong_column.parquet"],
     ["wrong_column.parquet", "no known preference fields"]),
    ("reward-deeply-nested-json", "reward", ["reward.data={d}/deep.jsonl"], ["deep.jsonl", "line 1", "nested"]),
    ("reward-binary-data", "reward", ["reward.data={d}/binary.jsonl"], ["binary.jsonl", "binary"]),
    ("reward-corrupt-gzip", "reward", ["reward.data={d}/corrupt.jsonl.gz"], ["corrupt.jsonl.gz", "gzip"]),
    ("sft-conversations-over-context", "sft", ["sft.data={d}/long_sft.jsonl", "sft.max_length=16"],
     ["no usable SFT conversations", "sft.max_length"]),
    ("reward-pairs-over-context", "reward", ["reward.data={d}/long_pairs.jsonl", "reward.max_length=16"],
     ["long_pairs.jsonl", "reward.max_length"]),
    ("ppo-prompts-over-context", "ppo", ["ppo.data={d}/long_prompts.jsonl", "ppo.max_prompt_length=16"],
     ["ppo.max_prompt_length"]),
    ("ppo-prompts-wrong-fields", "ppo", ["ppo.data={d}/wrong.csv"], ["wrong.csv", "no known prompt fields"]),
    ("ppo-prompts-empty", "ppo", ["ppo.data={d}/empty.jsonl"], ["empty.jsonl"]),
    ("eval-prompts-not-utf8", "eval", ["eval.prompts={d}/latin1.jsonl"], ["latin1.jsonl", "UTF-8"]),
    ("eval-prompts-wrong-types", "eval", ["eval.prompts={d}/prompt_number.jsonl"],
     ["prompt_number.jsonl", "line 1", "prompt"]),
    ("eval-lm-data-binary", "eval", ["eval.lm_data={d}/binary.txt"], ["binary.txt", "binary"]),
    # ---- the rank stage, the reward statistics, DPO/GRPO/RLOO and compare
    ("rank-k-one", "rank", ["rank.k=1"], ["rank.k"]),
    ("rank-labeler-unknown", "rank", ["rank.labeler=crowd"], ["rank.labeler", "crowd"]),
    ("rank-prompts-missing", "rank", ["rank.prompts={d}/missing.jsonl"], ["missing.jsonl", "does not exist"]),
    ("rank-policy-truncated-weights", "rank", ["rank.policy={bad}/truncated"], ["model.safetensors", "truncated"]),
    ("clean-run-name-escapes", "clean", ["run.name=../outside"], ["run.name", "one folder name"]),
    ("clean-run-name-absolute", "clean", ["run.name=/tmp"], ["run.name"]),
    ("clean-out-dir-empty", "clean", ["run.out_dir="], ["run.out_dir is empty"]),
    ("ppo-policy-is-a-reward-model", "ppo", ["ppo.policy={rm}"], ["{rm}", "not a language model"]),
    ("sft-init-is-a-reward-model", "sft", ["sft.init_from={rm}"], ["{rm}", "not a language model"]),
    ("eval-model-is-a-reward-model", "eval", ["eval.models=[{rm}]"], ["{rm}", "not a language model"]),
    ("rank-policy-is-a-reward-model", "rank", ["rank.policy={rm}"], ["{rm}", "not a language model"]),
    ("sft-device-cuda-without-a-gpu", "sft", ["run.device=cuda"], ["run.device=cuda", "no CUDA GPU"]),
    ("ppo-device-mps-without-one", "ppo", ["run.device=mps"], ["run.device=mps"]),
    ("train-data-empty", "pretrain", ["train.data="], ["data source is empty"]),
    ("ppo-prompts-all-blank", "ppo", ["ppo.data={d}/blank_prompts.jsonl"], ["blank_prompts.jsonl", "whitespace"]),
    ("pretrain-out-dir-through-a-file", "pretrain", ["run.out_dir={d}/good.txt/runs"], ["good.txt", "not a folder"]),
    ("ppo-prompts-a-fifo", "ppo", ["ppo.data={d}/a_fifo"], ["a_fifo", "not a regular file"]),
    ("summary-before-eval", "summary", [], ["eval/report.json", "make eval"]),
    ("summary-unknown-key", "summary", ["eval.no_such_key=1"], ["eval.no_such_key"]),
    ("reward-stats-prompts-zero", "reward-stats", ["reward.stats_prompts=0"], ["reward.stats_prompts", "> 0"]),
    ("reward-stats-reward-model-is-causal-lm", "reward-stats", ["ppo.reward_model={lm}"],
     ["score head", "reward model"]),
    ("align-method-unknown", "align", ["align.method=sft"], ["align.method", "sft"]),
    ("dpo-beta-zero", "align", ["dpo.beta=0"], ["dpo.beta", "> 0"]),
    ("grpo-batch-not-whole-groups", "align", ["align.method=grpo", "grpo.batch_size=6", "grpo.num_generations=4"],
     ["grpo.batch_size", "multiple"]),
    ("dpo-pairs-missing", "align", ["dpo.data={d}/missing.jsonl"], ["missing.jsonl"]),
    ("dpo-policy-truncated-weights", "align", ["dpo.policy={bad}/truncated"], ["model.safetensors", "truncated"]),
    ("compare-top-p-zero", "compare", ["eval.top_p=0"], ["eval.top_p", "(0, 1]"]),
    ("compare-without-an-sft-model", "compare", [], ["sft does not exist", "make sft"]),
    # ---- the server and the reward-model measure
    ("serve-port-out-of-range", "serve", ["--port", "70000"], ["--port", "65535"]),
    ("serve-port-taken", "serve", ["--port", "{busy_port}"], ["--port", "{busy_port}"]),
    ("serve-max-batch-zero", "serve", ["--max-batch", "0"], ["--max-batch"]),
    ("serve-truncated-weights", "serve", ["--model", "{bad}/truncated"], ["model.safetensors", "truncated"]),
    ("serve-compare-missing-folder", "serve", ["--compare", "{bad}/nothing_here"], ["nothing_here", "does not exist"]),
    ("own-answers-not-a-rank-artifact", "own-answers", ["{rm}", "{d}"], ["heldout_candidates.jsonl", "make rank"]),
    ("own-answers-reward-model-truncated", "own-answers", ["{bad}/rm_truncated", "{d}/rank"], ["model.safetensors"]),
]


def _save_model_copies(lm: Path, bad: Path) -> Path:
    """Broken copies of a working model folder, and a tiny reward model (one with a trained score head)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    def copy(name: str) -> Path:
        return Path(shutil.copytree(lm, bad / name))

    weights = (lm / "model.safetensors").read_bytes()
    (copy("truncated") / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (copy("empty_weights") / "model.safetensors").write_bytes(b"")
    (copy("no_config") / "config.json").unlink()
    (copy("corrupt_config") / "config.json").write_text('{"model_type": "llama", "hidden')
    (copy("no_tokenizer") / "tokenizer.json").unlink()
    (copy("corrupt_tokenizer") / "tokenizer.json").write_text('{"version": "1.0", "model": {"ty')
    (copy("corrupt_manifest") / "manifest.json").write_text('{"stage": "sft", "status": ')
    torch.manual_seed(0)
    rm_dir = bad.parent / "reward_model"
    rm = AutoModelForSequenceClassification.from_pretrained(lm, num_labels=1)
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(lm).save_pretrained(rm_dir)
    shutil.copytree(rm_dir, bad / "rm_truncated")
    rm_weights = (rm_dir / "model.safetensors").read_bytes()
    (bad / "rm_truncated" / "model.safetensors").write_bytes(rm_weights[:100])
    return rm_dir


def _write_data(d: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def jsonl(name: str, records) -> None:
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in records))

    questions = [f"What does function number {i} do?" for i in range(12)]
    (d / "good.txt").write_text(tiny_text(20_000))
    jsonl("sft.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "It works."}]}
                        for q in questions])
    jsonl("pairs.jsonl", [{"prompt": q, "chosen": "A clear answer.", "rejected": "No."} for q in questions])
    jsonl("prompts.jsonl", [{"prompt": q, "gold": "It works."} for q in questions])
    long_answer = "A very long answer that goes on and on. " * 20
    jsonl("long_sft.jsonl", [{"prompt": q, "completion": long_answer} for q in questions])
    jsonl("long_pairs.jsonl", [{"prompt": q, "chosen": long_answer, "rejected": long_answer + "No."} for q in questions])
    jsonl("long_prompts.jsonl", [{"prompt": q + " Please explain at length." * 20} for q in questions])
    jsonl("repeated_rank.jsonl", [{"prompt": "Q?", "responses": ["a", "b", "c", "d"], "ranking": [0, 0, 1, 2]}])
    jsonl("same_pairs.jsonl", [{"prompt": q, "chosen": "Same.", "rejected": "Same."} for q in questions])
    jsonl("wrong_types.jsonl", [{"prompt": 5, "completion": ["not", "messages"]}])
    jsonl("prompt_number.jsonl", [{"prompt": 42}])
    (d / "rank").mkdir()  # the held-out files of a rank artifact (what `make rank` writes for the reward report)
    heldout = {"prompt_id": "h1", "prompt": questions[0], "gold": "It works.", "responses": ["It works.", "No."],
               "temperatures": [0.7, 1.3]}
    jsonl("rank/heldout_candidates.jsonl", [heldout])
    jsonl("rank/heldout_rankings.jsonl", [{**heldout, "ranking": [0, 1]}])
    (d / "truncated.jsonl").write_text("\n".join((d / "sft.jsonl").read_text().splitlines()[:2]) + '\n{"messages": [{"ro')
    (d / "wrong.csv").write_text("question,reply\nWhat is 1+1?,2\n")
    (d / "empty.jsonl").write_text("")
    (d / "notes.txt").write_text("a user's own file\n")
    (d / "thesis").mkdir()
    (d / "thesis" / "chapter1.md").write_text("a user's own work\n")
    (d / "empty.txt").write_text("")
    (d / "empty.yaml").write_text("# nothing but a comment\n")
    (d / "broken.yaml").write_text("train:\n  lr: [1e-3\n  batch_size: 4\n")
    (d / "list.yaml").write_text("- train\n- sft\n")
    (d / "zero_heads.yaml").write_text("base: " + str(Path("configs/test.yaml").resolve()) + "\nmodel:\n  n_head: 0\n")
    (d / "typo.yaml").write_text("eval:\n  num_prompt: 4\n")
    noise = bytes(range(256)) * 64
    for name in ("binary.bin", "binary.txt", "binary.jsonl"):
        (d / name).write_bytes(noise)
    (d / "latin1.txt").write_bytes("A first line.\nCaf\u00e9 cr\u00e8me, d\u00e9j\u00e0 vu.\n".encode("latin-1"))
    (d / "latin1.jsonl").write_bytes('{"prompt": "Caf\u00e9?"}\n'.encode("latin-1"))
    (d / "deep.jsonl").write_text("[" * 100_000 + "\n")
    os.mkfifo(d / "a_fifo")  # reading it would block forever
    (d / "blank_prompts.jsonl").write_text('{"prompt": "   "}\n{"prompt": ""}\n{"prompt": "\\n\\t"}\n')
    (d / "huge_line.jsonl").write_text('{"messages": "' + "x" * 5_000_000)  # one 5 MB line, never closed
    pq.write_table(pa.table({"body": ["some text"] * 3, "score": [1, 2, 3]}), d / "wrong_column.parquet")
    (d / "corrupt.parquet").write_bytes(b"PAR1" + noise[:500])
    (d / "corrupt.jsonl.gz").write_bytes(gzip.compress((d / "pairs.jsonl").read_bytes())[:40])


@pytest.fixture(scope="session")
def world(tiny_lm_dir, tmp_path_factory):
    """Everything the cases point at, built once: data files, a reward model, broken model folders."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "data").mkdir()
    (root / "bad").mkdir()
    _write_data(root / "data")
    rm = _save_model_copies(Path(tiny_lm_dir), root / "bad")
    busy = socket.socket()  # a port some other program holds, for the duration of the corpus
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    yield {"lm": str(tiny_lm_dir), "rm": str(rm), "d": str(root / "data"), "bad": str(root / "bad"),
           "runs": root / "runs", "busy_port": busy.getsockname()[1]}
    busy.close()


def run_entry(stage: str, case: str, args: list[str], world: dict, capsys):
    """(exit code or the escaping exception, stderr) of one entry point run in-process."""
    import importlib

    module = importlib.import_module(ENTRY[stage][1])
    fill = lambda a: a.format(**world)  # noqa: E731
    if stage in OWN_ARGUMENTS:
        argv = [fill(a) for a in VALID[stage] + args]
    else:
        argv = ["--config", "configs/test.yaml", f"run.out_dir={world['runs']}", f"run.name={case}"]
        argv += [fill(a) for a in VALID[stage] + args]
    if stage == "ppo":  # PPO reads the statistics of `make reward-stats` (fixed ones: that step has cases of its own)
        fixed_reward_stats(argv)
    capsys.readouterr()
    try:
        module.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    except Exception as e:  # noqa: BLE001 - a traceback is exactly what this corpus looks for
        code = e
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, stage, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line_a_failing_exit_and_no_artifact(case, stage, args, words, world, capsys):
    code, err = run_entry(stage, case, args, world, capsys)
    assert not isinstance(code, BaseException), f"a traceback instead of a message: {code!r}"
    assert code not in (0, None), f"wrongly accepted (exit 0); stderr: {err[-500:]}"
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, f"expected one error line, got: {errors or err[-500:]}"
    for word in (w.format(**world) for w in words):
        assert word.lower() in errors[0].lower(), f"{word!r} not named in: {errors[0]}"
    if stage == "data":  # data.dir may name a user's file or folder: refused, never replaced
        assert (Path(world["d"]) / "thesis" / "chapter1.md").is_file() and (Path(world["d"]) / "notes.txt").is_file()
    artifact = ENTRY[stage][2]
    if artifact:
        assert not (world["runs"] / case / artifact / "manifest.json").exists(), "an artifact was committed"


def runnable_modules() -> set[str]:
    """What `python -m` can run in stages/, data/ and apps/: each package with a __main__.py, and each
    module with a main block (a stage's stage.py is its package's command, so it counts as the package), in
    every package a user's command may live in."""
    found = set()
    for top in ("stages", "data", "apps", "pipeline"):
        for f in (ROOT / top).rglob("*.py"):
            module = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            if f.name == "__main__.py":
                found.add(module.removesuffix(".__main__"))
            elif 'if __name__ == "__main__":' in f.read_text():
                found.add(module.removesuffix(".stage"))
    return found


def test_the_corpus_covers_every_command_with_cases_of_its_own():
    commands = {command for command, _, _ in ENTRY.values()}
    runnable = runnable_modules()
    assert "stages.ppo" in runnable and "apps.serve" in runnable  # the search finds commands at all
    assert commands == runnable - set(NOT_USER_COMMANDS), "a command without bad-input cases (add it to ENTRY)"
    assert {stage for _, stage, _, _ in CASES} == set(ENTRY) and len(CASES) >= 60
    assert len({case for case, *_ in CASES}) == len(CASES)  # a run directory per case
