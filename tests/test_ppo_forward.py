"""PPO's forwards (policy and reference log-probabilities, values, reward scores) take the lean
Llama path on plain models and give what the Hugging Face forwards give on left-padded prompts
with answers of uneven length, gradients included; a LoRA policy takes the HF path."""

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.lm.forward import lean_llama_body
from stages.ppo.rollout import (
    answer_token_logprobs,
    left_pad,
    policy_logits,
    position_ids,
    response_logprobs,
    sequence_scores,
    token_values,
    truncate_after_eos,
)

PROMPTS = ["What is a list?", "Say hello", "How do for loops work in Python?", "Name a colour"]


def rollout_like(tok):
    """[left pad][prompt][answer ... EOS][pad], answers ending after 1, 4, 7 tokens and one without EOS."""
    q, qm = left_pad([tok.encode(p) for p in PROMPTS], tok.pad_token_id)
    resp = torch.randint(10, 400, (4, 7), generator=torch.Generator().manual_seed(0))
    for row, end in enumerate([0, 3, None, 6]):
        if end is not None:
            resp[row, end] = tok.eos_token_id
    resp, rm, _ = truncate_after_eos(resp, tok.eos_token_id, tok.pad_token_id)
    assert (~qm).any() and (~rm).any()  # real padding on both sides
    return torch.cat([q, resp], 1), torch.cat([qm, rm], 1).long(), resp, q.size(1)


def test_lean_policy_value_and_reward_forwards_match_hf(tiny_lm_dir):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    scalar = AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1).eval()
    scalar.config.pad_token_id = tok.pad_token_id
    assert lean_llama_body(policy) is not None and lean_llama_body(scalar) is not None
    ids, attn, resp, p = rollout_like(tok)
    keep = attn[:, p:].bool()

    ours = answer_token_logprobs(policy, ids, attn, resp, p, 0.7)
    hf = response_logprobs(policy_logits(policy, ids, attn, p), resp, 0.7) * keep
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-5)
    assert (ours[~keep] == 0).all()
    params = list(policy.parameters())
    for mine, theirs in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(hf.sum(), params)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)

    values = token_values(scalar, ids, attn, p)
    h = scalar.model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).last_hidden_state
    torch.testing.assert_close(values[keep], scalar.score(h[:, p - 1:-1]).squeeze(-1)[keep], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(values).all()  # padded positions too: they are masked, and NaN * 0 is NaN

    hf_scores = scalar(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).logits.squeeze(-1)
    torch.testing.assert_close(sequence_scores(scalar, ids, attn), hf_scores, rtol=1e-5, atol=1e-5)


def test_lora_policy_logprobs_take_the_hf_path_with_the_adapters(tiny_lm_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                       init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    ids, attn, resp, p = rollout_like(tok)
    keep = attn[:, p:].bool()
    with torch.no_grad():
        ours = answer_token_logprobs(policy, ids, attn, resp, p, 0.7)
        hf = response_logprobs(policy_logits(policy, ids, attn, p), resp, 0.7) * keep
        with policy.disable_adapter():
            base = answer_token_logprobs(policy, ids, attn, resp, p, 0.7)
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-4)  # the (non-zero) adapters are applied
