from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_lm_fixture_loads_with_auto_classes(tiny_lm_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    assert tok.pad_token_id != tok.eos_token_id
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3 or out[0, -1].item() == tok.eos_token_id
