"""The PPO trainer on a tiny random Llama: on-policy first step, exact gradient accumulation,
left-padding invariance, learning a programmatic reward, resume after a kill, LoRA reference."""

import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.config.schema import PPOSection
from pipeline.errors import UserError
from stages.ppo.rollout import RolloutBatch, left_pad, policy_logits, response_logprobs, truncate_after_eos
from stages.ppo.trainer import PPOTrainer

PROMPTS = ["What is a list?", "Explain dict.get", "Who wrote the tempest", "Say hello", "How do loops work?",
           "Name a colour", "What is pi", "Open a file"] * 4
TARGET = set(range(100, 164))  # an eighth of the vocabulary: the programmatic reward asks for these tokens


def target_share(b: RolloutBatch) -> torch.Tensor:
    """Programmatic reward: the share of answer tokens drawn from TARGET (about 1/8 at random)."""
    hits = torch.tensor([[t in TARGET for t in row] for row in b.response_ids.tolist()], dtype=torch.float32)
    m = b.response_mask.float()
    return (hits * m).sum(1) / m.sum(1)


def make_cfg(**kw) -> PPOSection:
    base = dict(total_episodes=64, batch_size=16, num_minibatches=2, ppo_epochs=2, max_new_tokens=10, lr=5e-3,
                kl_coef=0.0, missing_eos_penalty=None, temperature=1.0, forward_batch_size=8, save_every=1,
                sample_every=1)
    base.update(kw)
    return PPOSection(**base)


def make_trainer(lm_dir, cfg, seed=0, **kw):
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(lm_dir)
    policy = AutoModelForCausalLM.from_pretrained(lm_dir)
    ref = AutoModelForCausalLM.from_pretrained(lm_dir)
    torch.manual_seed(seed)  # the value head is freshly initialised: same seed, same head
    value = AutoModelForSequenceClassification.from_pretrained(lm_dir, num_labels=1)
    return PPOTrainer(cfg, policy, ref, None, value, tok, PROMPTS, reward_fn=target_share, seed=seed,
                      show_progress=False, **kw)


def test_models_are_in_eval_mode_and_pad_must_differ_from_eos(tiny_lm_dir):
    tr = make_trainer(tiny_lm_dir, make_cfg())
    assert not any(m.training for m in tr.model.modules()) and not tr.ref.training
    assert tr.gen_config.top_k == 0 and tr.gen_config.top_p == 1.0 and tr.gen_config.use_cache
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.pad_token = tok.eos_token
    with pytest.raises(UserError, match="PAD"):
        PPOTrainer(make_cfg(), tr.ref, None, None, tr.model.value, tok, PROMPTS, reward_fn=target_share)


def test_first_minibatch_of_first_epoch_is_exactly_on_policy(tiny_lm_dir):
    m = make_trainer(tiny_lm_dir, make_cfg(ppo_epochs=2)).step()
    assert m["policy/first_ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["policy/first_ratio_var"] == pytest.approx(0.0, abs=1e-10)
    assert m["policy/ratio_var"] > 1e-8  # later minibatches moved off-policy: the log would show it
    for key in ("score", "reward/non_score", "reward/total", "kl", "entropy", "policy/approx_kl", "policy/clipfrac",
                "value/clipfrac", "loss/value", "value/explained_variance", "response_length", "eos_fraction",
                "time/rollout", "time/update", "tokens_per_s"):
        assert key in m


def test_logprobs_do_not_depend_on_left_padding(tiny_lm_dir):
    tr = make_trainer(tiny_lm_dir, make_cfg())
    policy = tr.model.policy
    prompt, answer = tr.prompt_ids[0], torch.tensor([[40, 41, 42, 43]])
    alone, mask1 = left_pad([prompt], tr.tok.pad_token_id)
    padded, mask2 = left_pad([prompt, prompt + [5] * 6], tr.tok.pad_token_id)  # row 0 gets 6 pads on the left
    outs = []
    for q, m in ((alone, mask1), (padded[:1], mask2[:1])):
        ids = torch.cat([q, answer], 1)
        attn = torch.cat([m, torch.ones_like(answer, dtype=torch.bool)], 1).long()
        with torch.no_grad():
            outs.append(response_logprobs(policy_logits(policy, ids, attn, q.size(1)), answer, 0.7))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def uneven_batch(tr) -> RolloutBatch:
    """A hand-made rollout whose answers end after 1, 3, ..., 10 tokens (some without EOS)."""
    g = torch.Generator().manual_seed(3)
    q_ids, q_mask = left_pad(tr.prompt_ids[:8], tr.tok.pad_token_id)
    resp = torch.randint(10, 500, (8, 10), generator=g)
    for row, end in enumerate([0, 2, 9, 4, None, 6, 1, None]):
        if end is not None:
            resp[row, end] = tr.tok.eos_token_id
    resp, mask, eos = truncate_after_eos(resp, tr.tok.eos_token_id, tr.tok.pad_token_id)
    return tr.score_rollout(RolloutBatch(q_ids, q_mask, resp, mask, eos))


def grads_after(tr, b, micro) -> torch.Tensor:
    tr.optimizer.zero_grad(set_to_none=True)
    tr.accumulate_gradients(b, torch.arange(len(b)), micro)
    return torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])


def test_gradient_accumulation_equals_the_full_batch_token_mean_with_uneven_lengths(tiny_lm_dir):
    tr = make_trainer(tiny_lm_dir, make_cfg())
    b = uneven_batch(tr)
    assert len(set(b.response_mask.sum(1).tolist())) > 3
    full = grads_after(tr, b, micro=8)
    torch.testing.assert_close(grads_after(tr, b, micro=2), full, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads_after(tr, b, micro=1), full, rtol=1e-4, atol=1e-7)
    # the naive alternative (mean per micro-batch, averaged) weighs short answers' tokens more: different
    tr.optimizer.zero_grad(set_to_none=True)
    for k in range(0, 8, 2):
        idx = torch.arange(k, k + 2)
        tr.accumulate_gradients(b, idx, 2)
    naive = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
    assert not torch.allclose(naive, full, rtol=1e-3)


def test_ppo_raises_a_programmatic_reward(tiny_lm_dir):
    """Fails if the sign of the policy loss or of the advantages is wrong (the reward would fall)."""
    tr = make_trainer(tiny_lm_dir, make_cfg(total_episodes=32 * 27, batch_size=32, max_new_tokens=16,
                                            ppo_epochs=4, forward_batch_size=32))
    scores = [tr.step()["score"] for _ in range(27)]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert first < 0.2, scores
    assert last > first + 0.1, scores


def test_resume_after_a_kill_gives_the_same_run(tiny_lm_dir, tmp_path):
    cfg = make_cfg(total_episodes=16 * 4, kl_coef=0.05, adaptive_kl=True, target_kl=0.01, kl_horizon=50,
                   save_every=2)
    whole = make_trainer(tiny_lm_dir, cfg, out_dir=tmp_path / "a", checkpoint_dir=tmp_path / "a_ckpt",
                         eval_prompts=PROMPTS[:3]).train()
    killed = make_trainer(tiny_lm_dir, cfg, out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "b_ckpt",
                          eval_prompts=PROMPTS[:3])
    killed.train(num_updates=3)  # checkpoint after update 2; update 3 is lost in the "kill"
    resumed = make_trainer(tiny_lm_dir, cfg, out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "b_ckpt",
                           eval_prompts=PROMPTS[:3])
    assert resumed.step_no == 2
    assert resumed.kl_ctl.value == whole[2]["kl_coef"] != cfg.kl_coef  # the adaptive beta came back too
    rest = resumed.train()
    skip = ("time/rollout", "time/update", "tokens_per_s")
    # The resumed history starts with the checkpoint's own row (update 2), restored so the stage can
    # report the last step's metrics even right after a resume; then updates 3.. as the whole run had them.
    assert len(rest) == len(whole) - 1
    for a, b in zip(whole[1:], rest):
        assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    for p, q in zip(resumed.model.parameters(), make_trainer(tiny_lm_dir, cfg, checkpoint_dir=tmp_path / "a_ckpt")
                    .model.parameters()):
        assert torch.equal(p, q)
    from pipeline.artifacts.metrics import read_metrics

    steps = [r["step"] for r in read_metrics(tmp_path / "b") if "score" in r]
    assert steps == [1, 2, 3, 4]  # metrics.jsonl reads as one run
    assert (tmp_path / "b" / "samples.md").read_text().count("## Step 3") == 1


def test_a_run_killed_before_its_first_checkpoint_leaves_no_rows_behind(tiny_lm_dir, tmp_path):
    from pipeline.artifacts.metrics import read_metrics

    cfg = make_cfg(total_episodes=16 * 2, save_every=2)
    killed = make_trainer(tiny_lm_dir, cfg, out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "ckpt",
                          eval_prompts=PROMPTS[:3])
    killed.train(num_updates=1)  # wrote the step-0 and step-1 rows and samples; no checkpoint yet
    assert not (tmp_path / "ckpt").exists()
    fresh = make_trainer(tiny_lm_dir, cfg, out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "ckpt",
                         eval_prompts=PROMPTS[:3])
    assert fresh.step_no == 0
    fresh.train()
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [0, 1, 1, 2, 2]  # eval at 0, then update + eval
    assert (tmp_path / "b" / "samples.md").read_text().count("## Step 0") == 1


def test_lora_reference_is_the_policy_with_adapters_disabled(tiny_lm_dir):
    from peft import LoraConfig, get_peft_model

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    sft = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    policy = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    value = AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1)
    cfg = make_cfg(lr=2e-2)
    tr = PPOTrainer(cfg, policy, None, None, value, tok, PROMPTS, reward_fn=target_share, show_progress=False)
    tr.step()
    b = uneven_batch(tr)
    with torch.no_grad():
        sft_logp = response_logprobs(policy_logits(sft, b.input_ids, b.attention_mask, b.prompt_len),
                                     b.response_ids, cfg.temperature)
    mask = b.response_mask
    torch.testing.assert_close(b.ref_logprobs, sft_logp * mask, atol=1e-5, rtol=1e-5)  # reference = frozen SFT
    assert not torch.allclose(b.logprobs, b.ref_logprobs, atol=1e-4)  # the adapters did learn
    assert dataclasses.is_dataclass(cfg)


# Reads glibc's own account of the heap (mallinfo2) after a 16 MB malloc and its free, in a fresh process.
_HEAP_PROBE = """
import ctypes, json, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]
took = None
if sys.argv[1] == "reuse":
    from pipeline.runtime.device import reuse_freed_cpu_memory
    took = reuse_freed_cpu_memory()
block = libc.malloc(16 << 20)
held = libc.mallinfo2()
libc.free(block)
freed = libc.mallinfo2()
print(json.dumps({"took": took, "mmapped": held.hblkhd, "kept_free": freed.fordblks}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in " ".join(platform.libc_ver()),
                    reason="mallopt/mallinfo2 are glibc's")
def test_reusing_freed_cpu_memory_serves_large_blocks_from_the_heap_and_keeps_them_after_free():
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONPATH": str(
                                 Path(__file__).resolve().parents[1])})
        return json.loads(out.stdout)

    default, reuse = probe("default"), probe("reuse")
    assert default["mmapped"] >= 16 << 20  # glibc's default: a fresh mapping from the OS, unmapped on free
    assert reuse["took"] is True
    assert reuse["mmapped"] < 16 << 20  # now served from the heap the process already has ...
    assert reuse["kept_free"] >= 16 << 20  # ... and kept there after free, for the next step to reuse
