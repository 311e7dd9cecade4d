"""The word-level vocabulary (tokenizer.kind=word): words and marks of any script, the most frequent
kept, <|unk|> for the rest (and counted), text written back whitespace-normalised, saved as a plain
Hugging Face tokenizer with our chat roles."""

import pytest
from transformers import AutoTokenizer

from pipeline.config.loader import load_config
from pipeline.errors import UserError
from pipeline.lm.tokenizer import EOS, PAD, ROLE_TOKENS
from pipeline.lm.word_tokenizer import UNK, count_unknown, normalise, train_word_tokenizer

TEXTS = ["Héllo, wörld! The café is open.", "Привет, мир.\nThe café is closed. Привет!",
         "नमस्ते दुनिया। 你好 世界", "Don't (stop) \"now\": 3.14 and 42."] * 2


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("word_tok")
    train_word_tokenizer(TEXTS, vocab_size=200, min_frequency=1).save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)  # what every later stage loads: no custom code


@pytest.mark.parametrize("text, written_back", [
    ("Héllo, wörld! The café is open.", "Héllo, wörld! The café is open."),
    ("Привет,   мир.\r\n  The\tcafé is closed.  ", "Привет, мир.\nThe café is closed."),
    ("नमस्ते दुनिया। 你好 世界", "नमस्ते दुनिया। 你好 世界"),
    ("Don't (stop) \"now\": 3.14 and 42.", "Don't (stop) \"now\": 3.14 and 42."),
    ("He\u0301llo", "Héllo"),  # a decomposed accent (e + combining acute) is the composed word (NFC)
])
def test_known_text_round_trips_whitespace_normalised(tok, text, written_back):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == written_back == normalise(text)


def test_tokens_are_words_and_single_marks_with_their_space(tok):
    tokens = tok.convert_ids_to_tokens(tok("Héllo, wörld! Привет", add_special_tokens=False)["input_ids"])
    assert tokens == ["Héllo", ",", "▁wörld", "!", "▁Привет"]
    # Indic vowel signs are combining marks: the word stays one token
    assert len(tok("नमस्ते", add_special_tokens=False)["input_ids"]) == 1


def test_unknown_words_become_unk_and_are_counted(tok):
    ids = tok("The zebra is open, Привет giraffe.", add_special_tokens=False)["input_ids"]
    assert count_unknown(tok, ids) == 2  # zebra, giraffe
    assert tok.decode(ids, skip_special_tokens=False) == "The <|unk|> is open, Привет <|unk|>."
    assert count_unknown(tok, tok("The café is open.", add_special_tokens=False)["input_ids"]) == 0


def test_vocab_size_keeps_the_most_frequent_words():
    texts = ["the the the cat cat dog"]
    tok = train_word_tokenizer(texts, vocab_size=len(ROLE_TOKENS) + 3 + 1 + 2, min_frequency=1)  # specials + 2
    assert len(tok) == 9
    ids = tok("the cat dog", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["the", "▁cat", UNK]  # "▁the" (2x) and "▁cat" (2x) vs "dog" (1x)
    # ("the" at the start and "▁the" after a space are different tokens; both were kept before "▁dog")


def test_chat_roles_and_template_as_for_bpe(tok):
    assert tok.eos_token == EOS and tok.pad_token == PAD and tok.unk_token == UNK
    for special in (PAD, EOS, *ROLE_TOKENS):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    ids = tok.apply_chat_template([{"role": "user", "content": "The café"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    assert tok.convert_ids_to_tokens(list(ids)) == ["<|user|>", "The", "▁café", EOS, "<|assistant|>"]


def test_word_vocabulary_and_a_reused_tokenizer_exclude_each_other():
    with pytest.raises(UserError, match="tokenizer.kind=word"):
        load_config("configs/test.yaml", ["tokenizer.kind=word", "tokenizer.from=gpt2"])
