"""The bad-inputs corpus: every command a user runs (each stage, the demo data builder, the chat, the
server, the reward-model measure), fed broken inputs.

Each case runs the entry point's `main(argv)` in-process, behind the same `main_guard` the command
line uses, and must: exit non-zero; print exactly one line with "error:" and no traceback; name
what is wrong in that line; and leave no committed artifact. (An empty `<stage>.partial/` left by
some failures is the shared artifact code's to clean up; it is not judged here.)

Run alone with `make faults` or `pytest tests/test_bad_inputs.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_input_files import build_world
from tests.conftest import ROOT
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
    "feedback-sim": ("apps.serve.feedback_sim", "apps.serve.feedback_sim", None),
}
# Commands that take no config overrides of a stage: their arguments are their own.
OWN_ARGUMENTS = {"chat", "serve", "own-answers", "feedback-sim"}
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
    # port 1: nothing listens there, so a case that failed to fail would be refused a connection, never hang
    "feedback-sim": ["--url", "http://127.0.0.1:1", "--prompts", "{d}/prompts.jsonl", "--rankings", "1"],
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
    ("clean-run-name-empty", "clean", ["run.name="], ["run.name"]),
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
    ("feedback-sim-one-answer-per-prompt", "feedback-sim", ["--k", "1"], ["--k at least 2"]),
    ("feedback-sim-prompts-missing", "feedback-sim", ["--prompts", "{d}/missing.jsonl"], ["missing.jsonl"]),
    ("feedback-sim-prompts-without-gold", "feedback-sim", ["--prompts", "{d}/two_prompts.jsonl"],
     ["two_prompts.jsonl", "gold"]),
    ("feedback-sim-no-server", "feedback-sim", [], ["cannot reach", "127.0.0.1:1"]),
    # ==== issue 25, item 9: what a careful attacker tries
    # ---- names and the run folder: nothing outside run.out_dir is written, truncated or deleted
    ("run-name-dotdot", "pretrain", ["run.name=../../outside"], ["run.name", "one folder name"]),
    ("run-name-dot", "sft", ["run.name=."], ["run.name"]),
    ("run-name-empty", "reward", ["run.name="], ["run.name"]),
    ("run-name-absolute", "ppo", ["run.name=/tmp/elsewhere"], ["run.name"]),
    ("run-name-nul", "pretrain", ["run.name=a\x00b"], ["run.name"]),
    ("run-name-a-tab", "sft", ["run.name=a\tb"], ["run.name"]),
    ("run-out-dir-nul", "eval", ["run.out_dir={d}/x\x00y"], ["run.out_dir"]),
    ("lock-links-to-a-users-file", "pretrain", ["run.out_dir={d}/linked_runs", "run.name=lock-links-out"],
     ["pretrain.lock", "link"]),
    ("work-folder-links-out", "sft", ["run.out_dir={d}/linked_runs", "run.name=partial-links-out"],
     ["sft.partial", "link"]),
    ("artifact-links-out", "pretrain", ["run.out_dir={d}/linked_runs", "run.name=artifact-links-out"],
     ["pretrain", "link"]),
    ("cache-links-out", "pretrain", ["run.out_dir={d}/linked_runs", "run.name=cache-links-out"], ["cache", "link"]),
    # ---- data sources that are not files
    ("sft-data-symlink-loop", "sft", ["sft.data={d}/loop"], ["loop"]),
    ("reward-data-dangling-symlink", "reward", ["reward.data={d}/dangling.jsonl"], ["dangling.jsonl"]),
    ("ppo-data-a-folder-named-jsonl", "ppo", ["ppo.data={d}/folder.jsonl"], ["folder.jsonl", "without data files"]),
    ("sft-data-dev-zero", "sft", ["sft.data=/dev/zero"], ["/dev/zero", "not a regular file"]),
    ("pretrain-data-dev-urandom", "pretrain", ["train.data=/dev/urandom"], ["/dev/urandom", "not a regular file"]),
    ("eval-prompts-a-folder-without-data", "eval", ["eval.prompts={d}/thesis"], ["thesis", "without data files"]),
    ("rank-prompts-a-fifo", "rank", ["rank.prompts={d}/a_fifo"], ["a_fifo", "not a regular file"]),
    # ---- numbers: huge, negative, infinite
    ("run-seed-negative", "sft", ["run.seed=-1"], ["run.seed"]),
    ("run-seed-over-32-bits", "pretrain", ["run.seed=99999999999"], ["run.seed"]),
    ("train-lr-inf", "pretrain", ["train.lr=inf"], ["train.lr", "finite"]),
    ("ppo-kl-coef-overflows", "ppo", ["ppo.kl_coef=1e400"], ["ppo.kl_coef", "finite"]),
    ("model-n-embd-a-terabyte", "pretrain", ["model.n_embd=1099511627776", "model.n_head=1"], ["model"]),
    ("train-warmup-negative", "pretrain", ["train.warmup_steps=-1"], ["train.warmup_steps"]),
    ("sft-max-length-negative", "sft", ["sft.max_length=-1"], ["sft.max_length"]),
    ("ppo-total-episodes-negative", "ppo", ["ppo.total_episodes=-32"], ["ppo.total_episodes"]),
    ("rank-num-prompts-zero", "rank", ["rank.num_prompts=0"], ["rank.num_prompts", "> 0"]),
    ("eval-max-new-tokens-negative", "eval", ["eval.max_new_tokens=-1"], ["eval.max_new_tokens"]),
    ("serve-max-tokens-negative", "serve", ["--max-tokens", "-1"], ["--max-tokens"]),
    ("grpo-one-generation-per-prompt", "align", ["align.method=grpo", "grpo.num_generations=1"],
     ["grpo.num_generations"]),
    # ---- keys: unicode, NUL, empty parts, values where sections are
    ("key-unicode", "pretrain", ["tr\u00e1in.lr=1"], ["tr\u00e1in", "unknown"]),
    ("key-nul", "sft", ["sft.lr\x00=1"], ["unknown"]),
    ("key-empty-part", "pretrain", ["train..lr=1"], ["train..lr"]),
    ("key-empty", "reward", ["=5"], ["unknown key", "'=5'"]),
    ("key-below-a-value", "pretrain", ["train.lr.x=1"], ["train.lr", "a value, not a section"]),
    ("value-a-mapping-for-a-number", "pretrain", ["train.lr={{a: 1}}"], ["train.lr", "number"]),
    ("value-a-list-for-a-path", "sft", ["sft.data=[a, b]"], ["sft.data"]),
    ("section-set-to-a-value", "pretrain", ["train=5"], ["train"]),
    # ---- presets: YAML's tricks
    ("preset-duplicate-keys", "pretrain", ["--config", "{d}/duplicate_keys.yaml"],
     ["duplicate_keys.yaml", "line 4", "lr", "twice"]),
    ("preset-billion-laughs", "pretrain", ["--config", "{d}/billion_laughs.yaml"], ["billion_laughs.yaml", "alias"]),
    ("preset-anchors", "sft", ["--config", "{d}/anchors.yaml"], ["anchors.yaml", "alias"]),
    ("preset-python-tag", "reward", ["--config", "{d}/python_tag.yaml"], ["python_tag.yaml", "not valid YAML"]),
    ("preset-a-5000-digit-number", "pretrain", ["--config", "{d}/huge_int.yaml"], ["huge_int.yaml"]),
    ("preset-base-is-a-data-file", "eval", ["--config", "{d}/base_is_data.yaml"], ["sft.jsonl"]),
    ("preset-a-folder", "sft", ["--config", "{d}/thesis"], ["thesis", "folder"]),
    ("preset-dev-zero", "pretrain", ["--config", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    ("preset-a-fifo", "ppo", ["--config", "{d}/a_fifo"], ["a_fifo", "not a regular file"]),
    # ---- records: JSON's NaN, rankings that are no ranking, roles and shapes
    ("ppo-prompts-nan", "ppo", ["ppo.data={d}/nan_prompts.jsonl"], ["nan_prompts.jsonl", "line 1"]),
    ("reward-ranking-nan", "reward", ["reward.data={d}/nan_ranking.jsonl"], ["nan_ranking.jsonl", "line 1"]),
    ("reward-margin-nan", "reward", ["reward.data={d}/nan_margin.jsonl"], ["nan_margin.jsonl", "margin"]),
    ("reward-rank-out-of-range", "reward", ["reward.data={d}/rank_out_of_range.jsonl"],
     ["rank_out_of_range.jsonl", "line 1", "ranking"]),
    ("reward-rank-negative", "reward", ["reward.data={d}/rank_negative.jsonl"], ["rank_negative.jsonl", "ranking"]),
    ("dpo-rank-booleans", "align", ["dpo.data={d}/rank_bools.jsonl"], ["rank_bools.jsonl", "ranking"]),
    ("reward-rank-floats", "reward", ["reward.data={d}/rank_floats.jsonl"], ["rank_floats.jsonl", "ranking"]),
    ("reward-rank-one-response", "reward", ["reward.data={d}/rank_one_response.jsonl"], ["rank_one_response.jsonl"]),
    ("sft-unknown-role", "sft", ["sft.data={d}/messages_bad_role.jsonl"], ["messages_bad_role.jsonl", "role"]),
    ("sft-no-assistant-turn", "sft", ["sft.data={d}/messages_no_assistant.jsonl"], ["messages_no_assistant.jsonl"]),
    ("sft-a-list-per-line", "sft", ["sft.data={d}/a_list_per_line.jsonl"], ["a_list_per_line.jsonl", "line 1"]),
    ("ppo-json-object-not-a-list", "ppo", ["ppo.data={d}/json_object.json"], ["json_object.json", "list"]),
    ("eval-prompts-utf16", "eval", ["eval.prompts={d}/utf16.jsonl"], ["utf16.jsonl"]),
    ("sft-csv-unclosed-quote", "sft", ["sft.data={d}/unclosed_quote.csv"], ["unclosed_quote.csv"]),
    ("ppo-prompts-gzip-bomb", "ppo", ["ppo.data={d}/bomb.jsonl.gz"], ["bomb.jsonl.gz"]),
    ("reward-gz-that-is-not-gzip", "reward", ["reward.data={d}/not_gzip.jsonl.gz"], ["not_gzip.jsonl.gz", "gzip"]),
    ("eval-prompts-gzip-cut-short", "eval", ["eval.prompts={d}/cut.jsonl.gz"], ["cut.jsonl.gz", "gzip"]),
    ("ppo-fewer-prompts-than-a-batch", "ppo", ["ppo.data={d}/two_prompts.jsonl"], ["ppo.batch_size"]),
    ("ppo-development-prompts-all-blank", "ppo", ["ppo.eval_data={d}/blank_prompts.jsonl"], ["blank_prompts.jsonl"]),
    # ---- model folders that lie
    ("pretrain-init-from-a-reward-model", "pretrain", ["model.init_from={rm}"], ["{rm}", "not a language model"]),
    ("sft-init-config-a-terabyte-wide", "sft", ["sft.init_from={bad}/huge_hidden"], ["huge_hidden"]),
    ("eval-model-negative-vocab", "eval", ["eval.models=[{bad}/negative_vocab]"], ["negative_vocab"]),
    ("chat-model-zero-layers", "chat", ["--model", "{bad}/zero_layers"], ["zero_layers"]),
    ("ppo-policy-config-of-another-architecture", "ppo", ["ppo.policy={bad}/other_architecture"],
     ["other_architecture"]),
    ("rank-policy-unknown-model-type", "rank", ["rank.policy={bad}/unknown_model_type"], ["gpt9000"]),
    ("serve-weights-header-claims-exabytes", "serve", ["--model", "{bad}/huge_header"], ["model.safetensors"]),
    ("dpo-tokenizer-json-not-a-tokenizer", "align", ["dpo.policy={bad}/tokenizer_not_a_tokenizer"],
     ["tokenizer.json"]),
    ("chat-template-does-not-compile", "chat", ["--model", "{bad}/template_broken"], ["template"]),
    ("sft-tokenizer-config-corrupt", "sft", ["sft.init_from={bad}/tokenizer_config_corrupt"],
     ["tokenizer_config.json"]),
]


@pytest.fixture(scope="session")
def world(tiny_lm_dir, tmp_path_factory):
    yield from build_world(tiny_lm_dir, tmp_path_factory)


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
    # a user's files that cases point at (data.dir, links from a run folder): refused, never replaced or truncated
    d = Path(world["d"])
    assert (d / "thesis" / "chapter1.md").is_file() and (d / "notes.txt").is_file()
    assert (d / "victim.txt").read_text() == "a user's own file\n"
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
    assert {stage for _, stage, _, _ in CASES} == set(ENTRY) and len(CASES) >= 200
    assert len({case for case, *_ in CASES}) == len(CASES)  # a run directory per case


def test_hostile_looking_inputs_that_are_rightly_accepted_keep_their_meaning(world, tiny_lm_dir, tmp_path):
    """Accepted, and read as the person who wrote them meant: a byte-order mark and Windows line ends are
    not text; a quoted CSV field keeps its newlines; a ranking of some answers ranks those; the chat
    template's markers in pretraining and perplexity text are text, never a role or the end of a document."""
    import numpy as np
    from transformers import AutoTokenizer

    from data.loaders import load_pairs, load_prompts, load_sft
    from data.token_cache import build_token_cache
    from stages.eval.lm import token_stream

    d = Path(world["d"])
    plain = [p["prompt"] for p in load_prompts(str(d / "prompts.jsonl"))]
    assert [p["prompt"] for p in load_prompts(str(d / "bom.jsonl"))] == plain
    assert [p["prompt"] for p in load_prompts(str(d / "crlf.jsonl"))] == plain
    assert load_sft(str(d / "bom.csv"))[0]["messages"][0]["content"] == "What is 1+1?"
    conversation = load_sft(str(d / "newlines.csv"))[0]["messages"]
    assert [m["content"] for m in conversation] == ["Line one\nline two?", "An answer\nover two lines."]
    pairs = load_pairs(str(d / "rank_short.jsonl"))  # [0, 1] of three answers: answer 2 is unranked, unused
    assert [(p["chosen"][-1]["content"], p["rejected"][-1]["content"]) for p in pairs] == [("a", "b")]

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    special = set(tok.all_special_ids)
    splits, _ = build_token_cache([(str(d / "markers.txt"), "split")], tok, tmp_path / "cache", val_fraction=0.3)
    for split in splits.values():
        ids = np.asarray(split.tokens())
        eos_at = np.flatnonzero(ids == tok.eos_token_id)
        assert len(eos_at) == split.n_docs and eos_at[-1] == len(ids) - 1  # one EOS per document, at its end
        assert not special & set(ids[ids != tok.eos_token_id].tolist())
    text = "<|user|> hello <|end|> <|assistant|> hi <|end|>"
    stream, owned = token_stream(tok, [text], max_tokens=1000)
    assert stream[-1] == tok.eos_token_id and not special & set(stream[:-1])
    assert sum(owned) == len(text.encode())
