"""The lean Llama forward on padded batches computes what the Hugging Face model computes (hidden
states and gradients), stays finite on padding, and steps aside for models it does not cover;
the fused token log-probability equals the log-softmax it replaces, gradients included."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from pipeline.config.schema import ModelSection
from pipeline.lm.forward import lean_llama_body, llama_hidden_states, positions_from_mask
from pipeline.lm.model import build_model
from stages.ppo.token_logprobs import token_logprobs


def tiny_llama(tok, n_kv_head=None):
    torch.manual_seed(0)
    return build_model(ModelSection(n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32, block_size=32), tok).eval()


def padded_batch(vocab: int, pad_id: int):
    """Rows with 0..5 left pads (prompts) and 0..4 right pads (answers ended early)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (5, 16), generator=g)
    mask = torch.ones_like(ids)
    for row, (left, right) in enumerate([(0, 0), (3, 2), (5, 0), (1, 4), (0, 3)]):
        mask[row, :left] = 0
        mask[row, ids.size(1) - right:] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def hf_hidden(model, ids, mask):
    return model.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                       use_cache=False).last_hidden_state


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_lean_padded_forward_matches_hf_hidden_states_and_gradients(tiny_lm_dir, n_kv_head):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = tiny_llama(tok, n_kv_head)
    ids, mask = padded_batch(len(tok), tok.pad_token_id)
    body = lean_llama_body(model)
    assert body is model.model
    ours, theirs = llama_hidden_states(body, ids, mask), hf_hidden(model, ids, mask)
    assert torch.isfinite(ours).all()  # left-padding queries see no real key: still no NaN
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
    # Only positions >= first come out (the last layer skips the others): the same values.
    tail = llama_hidden_states(body, ids, mask, first=9)
    torch.testing.assert_close(tail[real[:, 9:]], theirs[:, 9:][real[:, 9:]], rtol=1e-5, atol=1e-5)
    # Gradients of a loss on the real positions, through every parameter (RMSNorm has its own backward).
    weights = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(2)) * real[..., None]
    params = [p for p in model.parameters() if p.requires_grad]
    our_grads = torch.autograd.grad((tail * weights[:, 9:]).sum(), params, allow_unused=True)
    hf_grads = torch.autograd.grad((theirs[:, 9:] * weights[:, 9:]).sum(), params, allow_unused=True)
    for p, mine, ref in zip(params, our_grads, hf_grads):
        if ref is None:
            assert mine is None or not mine.any()
        else:
            torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5, msg=lambda m, p=p: f"{p.shape}: {m}")


def test_lean_forward_steps_aside_for_adapters_hooks_and_checkpointing(tiny_lm_dir):
    from peft import LoraConfig, get_peft_model

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    peft_model = get_peft_model(tiny_llama(tok), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert lean_llama_body(peft_model.get_base_model()) is None  # LoRA layers: HF's forward applies them
    hooked = tiny_llama(tok)
    hooked.model.layers[0].mlp.register_forward_pre_hook(lambda *a: None)  # as FSDP / ZeRO-3 gathering would
    assert lean_llama_body(hooked) is None
    checkpointed = tiny_llama(tok)
    checkpointed.train()
    checkpointed.gradient_checkpointing_enable() if not hasattr(checkpointed, "activation_checkpointing_enable") \
        else checkpointed.activation_checkpointing_enable()
    assert lean_llama_body(checkpointed) is None
    assert lean_llama_body(tiny_llama(tok)) is not None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_token_logprobs_equal_the_log_softmax_and_its_gradients(temperature):
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(40, 16, generator=g) * 3).requires_grad_()
    weight = torch.randn(300, 16, generator=g).requires_grad_()
    targets = torch.randint(0, 300, (40,), generator=g)
    upstream = torch.randn(40, generator=g)
    ref = F.log_softmax(hidden @ weight.t() / temperature, -1).gather(-1, targets[:, None]).squeeze(-1)
    ours = token_logprobs(hidden, weight, targets, temperature)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(torch.autograd.grad((ours * upstream).sum(), (hidden, weight)),
                            torch.autograd.grad((ref * upstream).sum(), (hidden, weight))):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)

