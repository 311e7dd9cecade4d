"""The byte-level BPE tokenizer: lossless on any text, chat roles as single tokens, a chat template whose
{% generation %} markers give later stages an assistant-only mask, and foreign tokenizers made chat-ready."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline.lm.tokenizer import EOS, PAD, ROLE_TOKENS, ensure_chat_ready, load_tokenizer, train_tokenizer
from tests.conftest import tiny_text


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(tiny_text(60_000).split("\n\n"), vocab_size=400)


def test_vocabulary_size_and_special_tokens(tok):
    assert len(tok) == 400
    assert tok.eos_token == EOS and tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    for special in (PAD, EOS, *ROLE_TOKENS):
        assert len(tok.encode(special, add_special_tokens=False)) == 1


@pytest.mark.parametrize("text", ["To be, or not to be", "  leading spaces\n\ttabs", "naïve café — 東京 🙂",
                                  "def f(x):\n    return x ** 2\n"])
def test_round_trip_is_lossless_even_for_unseen_characters(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_training_merges_frequent_words(tok):
    assert len(tok.encode(" the", add_special_tokens=False)) == 1
    assert len(tok.encode("the king", add_special_tokens=False)) < len("the king")


def test_chat_template_format_and_generation_prompt(tok):
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    assert tok.apply_chat_template(messages, tokenize=False) == "<|user|>Hi?<|end|><|assistant|>Hello.<|end|>"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>Hi?<|end|><|assistant|>"
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_generation_mask_covers_assistant_content_and_its_end_token_only(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a king."},
                {"role": "assistant", "content": "Richard."}, {"role": "user", "content": "Another?"},
                {"role": "assistant", "content": "Henry."}]
    out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "Richard.<|end|>Henry.<|end|>"
    assert tok.decode([i for i, m in zip(ids, mask) if not m]).count("<|assistant|>") == 2


def test_saved_tokenizer_reloads_with_auto_classes(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|user|>Who?<|end|><|assistant|>Me.<|end|>"
    assert again.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert again.chat_template == tok.chat_template
    reloaded, changes = load_tokenizer(str(tmp_path))
    assert changes == []  # ours is already chat-ready


def test_a_foreign_tokenizer_is_made_chat_ready():
    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bare.add_tokens(["a", "b"])
    foreign = PreTrainedTokenizerFast(tokenizer_object=bare)
    changes = ensure_chat_ready(foreign)
    assert any("EOS" in c for c in changes) and any("PAD" in c for c in changes)
    assert foreign.pad_token_id != foreign.eos_token_id
    assert all(t in foreign.get_vocab() for t in ROLE_TOKENS)
    assert "{% generation %}" in foreign.chat_template
    assert ensure_chat_ready(foreign) == []  # idempotent
