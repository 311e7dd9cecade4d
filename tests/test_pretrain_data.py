"""Pretraining data: text -> EOS-separated token files, cached by content, with a held-out split."""

import json
import os

import numpy as np
import pytest

from data.token_cache import _is_val, build_token_cache, prune_cache, source_fingerprint
from pipeline.errors import UserError
from pipeline.lm.tokenizer import train_tokenizer
from tests.conftest import tiny_text


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(tiny_text(50_000).split("\n\n"), vocab_size=300)


def docs_file(tmp_path, docs, name="docs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def test_documents_become_eos_separated_tokens_with_their_byte_count(tmp_path, tok):
    train = docs_file(tmp_path, ["first doc", "second doc é"], "train.jsonl")
    val = docs_file(tmp_path, ["held out"], "val.jsonl")
    splits, _ = build_token_cache([(str(train), "train"), (str(val), "val")], tok, tmp_path / "cache")
    tokens = splits["train"].tokens()
    assert tokens.dtype == np.uint16  # a small vocabulary fits in two bytes
    expected = tok.encode("first doc", add_special_tokens=False) + [tok.eos_token_id] + \
        tok.encode("second doc é", add_special_tokens=False) + [tok.eos_token_id]
    assert tokens.tolist() == expected
    assert splits["train"].n_bytes == len("first docsecond doc é".encode()) and splits["train"].n_docs == 2
    assert tok.decode(splits["val"].tokens().tolist()) == "held out<|end|>"


def test_one_source_is_split_into_train_and_validation_documents(tmp_path, tok):
    docs = [f"document number {i}" for i in range(100)]
    splits, _ = build_token_cache([(str(docs_file(tmp_path, docs)), "split")], tok, tmp_path / "cache",
                                  val_fraction=0.1)
    assert (splits["train"].n_docs, splits["val"].n_docs) == (90, 10)
    assert [i for i in range(100) if _is_val(i, 0.1)] == [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]
    val_text = tok.decode(splits["val"].tokens().tolist())
    assert "document number 9<|end|>" in val_text and "document number 8<" not in val_text


def test_too_few_documents_to_hold_out_validates_on_the_tail(tmp_path, tok):
    path = tmp_path / "one.txt"
    path.write_text(tiny_text(5_000).replace("\n\n", "\n"))  # one document
    splits, _ = build_token_cache([(str(path), "split")], tok, tmp_path / "cache", val_fraction=0.1)
    train, val = splits["train"], splits["val"]
    assert val.n_tokens > 0 and train.stop == val.start  # disjoint: the last tokens are held out
    assert 0.05 < val.n_tokens / (train.n_tokens + val.n_tokens) < 0.15


def test_the_cache_is_reused_when_inputs_are_unchanged_and_rebuilt_when_they_change(tmp_path, tok):
    path = docs_file(tmp_path, [f"doc {i}" for i in range(30)])
    sources = [(str(path), "split")]
    _, first = build_token_cache(sources, tok, tmp_path / "cache")
    stamp = (first / "train.bin").stat().st_mtime_ns
    _, again = build_token_cache(sources, tok, tmp_path / "cache")
    assert again == first and (again / "train.bin").stat().st_mtime_ns == stamp  # not re-tokenized

    docs_file(tmp_path, [f"doc {i}" for i in range(31)])  # the content changed
    _, changed = build_token_cache(sources, tok, tmp_path / "cache")
    assert changed != first
    other_tok = train_tokenizer(tiny_text(20_000).split("\n\n"), vocab_size=280)
    _, other = build_token_cache(sources, other_tok, tmp_path / "cache")  # another tokenizer
    assert other not in (first, changed)
    _, resplit = build_token_cache(sources, tok, tmp_path / "cache", val_fraction=0.2)
    assert resplit not in (first, changed, other)


def test_sources_are_fingerprinted_by_content_and_missing_paths_are_refused(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    assert source_fingerprint(str(tmp_path / "a.txt")) != source_fingerprint(str(tmp_path / "b.txt"))
    assert len(source_fingerprint(str(tmp_path / "*.txt"))) == 16  # globs too
    assert source_fingerprint("roneneldan/TinyStories") == "hub:roneneldan/TinyStories"
    for missing in (str(tmp_path / "nope.txt"), str(tmp_path / "*.md"), "./data/x.jsonl"):
        with pytest.raises(UserError, match="does not exist"):
            source_fingerprint(missing)


def test_empty_data_is_refused(tmp_path, tok):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no text"):
        build_token_cache([(str(empty), "split")], tok, tmp_path / "cache")


def test_prune_cache_keeps_the_entries_in_use_and_the_most_recently_used_other(tmp_path):
    for i, name in enumerate(["tokens-old", "tokens-recent", "tokens-now", "tokenizer-old", "tokenizer-now"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    messages = []
    removed = prune_cache(tmp_path, [tmp_path / "tokens-now", tmp_path / "tokenizer-old"], log=messages.append)
    assert sorted(p.name for p in removed) == ["tokens-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer-now", "tokenizer-old", "tokens-now",
                                                          "tokens-recent"]
    assert "removed 1 old entry" in messages[0]
    # tokenizer-old was touched as in use, so it is now the most recent; with nothing kept besides
    # what is in use, every other entry goes.
    removed = prune_cache(tmp_path, [tmp_path / "tokens-now"], keep_others=0, log=messages.append)
    assert sorted(p.name for p in removed) == ["tokenizer-now", "tokenizer-old", "tokens-recent"]
