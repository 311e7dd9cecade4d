"""The tiny model every other test builds on: what was saved is what loads, through the Auto classes."""

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.lm.tokenizer import ROLE_TOKENS


def test_tiny_lm_fixture_loads_with_auto_classes(tiny_lm_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    # Every saved weight loads as saved: a renamed or missing key would be re-initialised at random.
    saved, state = load_file(tiny_lm_dir / "model.safetensors"), model.state_dict()
    assert saved and set(saved) <= set(state), f"saved weights the model does not have: {set(saved) - set(state)}"
    assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    assert len(tok) <= model.config.vocab_size  # every token id has an embedding row
    assert tok.pad_token_id != tok.eos_token_id and tok.eos_token_id is not None
    # The chat template travels with the tokenizer: role tokens, and the prompt ends asking the assistant.
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>") and "Hi" in text
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in ROLE_TOKENS)
    # Greedy generation through transformers is the argmax of the loaded model's own logits.
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    expected = ids
    with torch.no_grad():
        for _ in range(3):
            nxt = model(expected).logits[0, -1].argmax().view(1, 1)
            expected = torch.cat([expected, nxt], 1)
            if nxt.item() == tok.eos_token_id:
                break
    assert out.tolist() == expected.tolist()
