"""The PPO benchmark's shared setup (benchmarks/ppo_setup.py): what both trainers load.

The benchmark itself (TRL 1.12 in its own venv against ours) is not run here: it needs that
venv and minutes of CPU. These tests pin down the parts it cannot do without."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from benchmarks.ppo_ours import ppo_section
from benchmarks.ppo_setup import BenchSetup, build, from_run, reward_target, target_share
from benchmarks.trl_ppo_peer import heldout_score, read_prompts
from pipeline.errors import UserError

MICRO = BenchSetup(n_layer=1, n_head=2, n_embd=32, vocab_size=320, batch_size=8, num_minibatches=2,
                   max_new_tokens=8, total_episodes=16, forward_batch_size=8, num_prompts=16,
                   num_eval_prompts=4, rm_steps=30)


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory):
    return build(tmp_path_factory.mktemp("bench") / "models", MICRO, log=lambda *_: None)


def test_target_share_counts_only_real_tokens():
    ids = torch.tensor([[5, 7, 9, 0], [7, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    share = target_share(ids, mask, torch.tensor([7, 9]))
    assert share.tolist() == pytest.approx([2 / 3, 1.0])
    assert reward_target(torch.tensor([0.0, 0.5, 1.0])).tolist() == [-2.0, 0.0, 2.0]


def test_build_writes_models_both_trainers_can_load(bench_models):
    saved = json.loads((bench_models / "setup.json").read_text())
    assert saved["batch_size"] == MICRO.batch_size and "rm_val_r2" in saved
    tok = AutoTokenizer.from_pretrained(bench_models / "policy")
    assert tok.pad_token_id != tok.eos_token_id
    policy = AutoModelForCausalLM.from_pretrained(bench_models / "policy")
    assert policy.config.num_hidden_layers == 1
    for name in ("reward", "value"):
        head = AutoModelForSequenceClassification.from_pretrained(bench_models / name, num_labels=1)
        assert head.config.num_labels == 1 and head.config.hidden_size == 32
    assert len(read_prompts(bench_models / "prompts.jsonl")) == MICRO.num_prompts
    assert len(read_prompts(bench_models / "eval_prompts.jsonl")) == MICRO.num_eval_prompts


def test_build_reuses_models_when_only_run_settings_change(bench_models):
    stamp = (bench_models / "policy" / "model.safetensors").stat().st_mtime_ns
    again = build(bench_models, BenchSetup(**{**MICRO.__dict__, "total_episodes": 32, "lr": 1e-4}),
                  log=lambda *_: None)
    assert (again / "policy" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((again / "setup.json").read_text())["total_episodes"] == 32


def test_heldout_score_is_deterministic_for_a_seed(bench_models):
    tok = AutoTokenizer.from_pretrained(bench_models / "policy")
    policy = AutoModelForCausalLM.from_pretrained(bench_models / "policy")
    rm = AutoModelForSequenceClassification.from_pretrained(bench_models / "reward", num_labels=1)
    prompts = read_prompts(bench_models / "eval_prompts.jsonl")
    a = heldout_score(policy, rm, tok, prompts, max_new_tokens=8, temperature=0.7, seed=3)
    b = heldout_score(policy, rm, tok, prompts, max_new_tokens=8, temperature=0.7, seed=3)
    assert a == b and a["n"] == MICRO.num_eval_prompts and torch.isfinite(torch.tensor(a["score_mean"]))


def test_our_config_gets_the_shared_settings():
    ppo = ppo_section(json.loads(json.dumps(MICRO.__dict__)))
    assert (ppo.batch_size, ppo.num_minibatches, ppo.ppo_epochs, ppo.max_new_tokens, ppo.grad_accum) == (8, 2, 4, 8, 1)
    assert (ppo.top_k, ppo.top_p, ppo.missing_eos_penalty, ppo.adaptive_kl) == (0, 1.0, None, False)


def test_use_run_names_the_missing_artifact(tmp_path):
    with pytest.raises(UserError, match="sft"):
        from_run(tmp_path / "runs" / "tiny", tmp_path / "out", MICRO, log=lambda *_: None)
