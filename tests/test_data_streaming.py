"""Big data stays on disk: a record over the bound is dropped and counted without ever being read whole,
SFT's records are a memory-mapped Arrow cache that a changed file never reuses, and the streamed path
screens exactly as the in-memory one (serially or on worker processes). Peak memory and time on a
200 MB file are measured in benchmarks/data_memory.py, not here."""

import gzip
import json
import logging
import tracemalloc
from pathlib import Path

import pytest

from data.loaders import (
    MAX_RECORD_BYTES,
    SFT,
    TOO_LONG,
    Tally,
    load_pairs,
    load_prompts,
    load_sft,
    normalized,
)
from data.record_cache import cached_records
from pipeline.errors import UserError


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_lines(path, lines: list) -> str:
    """Records (dicts, as JSON) and raw strings, one per line (gzipped for a .gz name)."""
    with (gzip.open(path, "wt") if str(path).endswith(".gz") else open(path, "w")) as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def test_a_record_over_the_bound_is_dropped_and_counted_without_being_read_whole(tmp_path):
    huge = json.dumps(chat("Tell me everything.", "word " * (10 * MAX_RECORD_BYTES)))  # a 50 MB line
    path = write_lines(tmp_path / "sft.jsonl", [chat("a?", "A."), huge, chat("b?", "B."), chat("c?", "C.")])
    tally = Tally()
    tracemalloc.start()
    try:
        records = list(normalized(path, SFT, tally))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["messages"][1]["content"] for r in records] == ["A.", "B.", "C."]
    assert (tally.seen, dict(tally.dropped)) == (4, {TOO_LONG: 1})
    assert peak < 8 * MAX_RECORD_BYTES  # read in 1 MiB chunks: the 50 MB line never became one bytes object


def test_line_numbers_stay_exact_after_a_dropped_line(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [chat("a?", "A."), "x" * (MAX_RECORD_BYTES + 1), '{"oops": 1}'])
    with pytest.raises(UserError, match=r"sft\.jsonl, line 3: no known SFT fields"):
        load_sft(path)


@pytest.mark.parametrize("load, name, fits", [
    (load_pairs, "pairs.jsonl", {"prompt": "Why?", "chosen": "Because.", "rejected": "No."}),
    (load_prompts, "prompts.jsonl", {"prompt": "Why?"}),
    (load_prompts, "prompts.txt", "Why?"),
    (load_sft, "sft.jsonl.gz", chat("Why?", "Because.")),
])
def test_every_record_loader_drops_and_counts_an_over_long_line(tmp_path, caplog, load, name, fits):
    long = "y" * (MAX_RECORD_BYTES + 1) if name.endswith(".txt") else {**fits, "pad": "y" * MAX_RECORD_BYTES}
    path = write_lines(tmp_path / name, [fits, long, fits])
    with caplog.at_level(logging.WARNING, logger="data.loaders"):
        assert len(load(path)) == 2
    assert "dropped 1 of 3" in caplog.text and "1 longer than 1 MiB" in caplog.text


def test_a_line_just_under_the_bound_is_kept(tmp_path):
    record = chat("Long?", "")
    record["messages"][1]["content"] = "z" * (MAX_RECORD_BYTES - len(json.dumps(record)) - 1)  # with "\n": the bound
    assert len(load_sft(write_lines(tmp_path / "sft.jsonl", [record]))) == 1


def test_the_record_cache_lives_under_the_cache_root_and_a_changed_file_is_read_again(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "run" / "cache"
    data.mkdir()
    path = write_lines(data / "sft.jsonl", [chat("a?", "A."), chat("b?", "B.")])
    first = cached_records(path, SFT, cache)
    assert [r["messages"][1]["content"] for r in first] == ["A.", "B."]
    assert sorted(p.name for p in data.iterdir()) == ["sft.jsonl"]  # nothing written beside the user's data
    assert all(str(f["filename"]).startswith(str(cache)) for f in first.cache_files)
    write_lines(data / "sft.jsonl", [chat("a?", "A."), chat("c?", "C.")])  # same size, same line count
    assert [r["messages"][1]["content"] for r in cached_records(path, SFT, cache)] == ["A.", "C."]
    assert len(list(cache.glob("records-*"))) == 2
    again = cached_records(path, SFT, cache)  # unchanged: the entry is mapped again, not rebuilt
    assert again.cache_files == cached_records(path, SFT, cache).cache_files


def test_a_bad_record_or_nothing_usable_publishes_no_cache_entry(tmp_path):
    cache = tmp_path / "cache"
    bad = write_lines(tmp_path / "bad.jsonl", [chat("a?", "A."), {"oops": 1}])
    with pytest.raises(UserError, match=r"bad\.jsonl, line 2: no known SFT fields"):
        cached_records(bad, SFT, cache)
    empty = write_lines(tmp_path / "empty.jsonl", ["x" * (MAX_RECORD_BYTES + 1)])
    with pytest.raises(UserError, match=r"no usable SFT records \(1 read; dropped: 1 longer than 1 MiB"):
        cached_records(empty, SFT, cache)
    assert list(cache.iterdir()) == []  # no entry, no scratch folder


def test_the_cache_reports_the_counts_of_the_first_reading(tmp_path, caplog):
    path = write_lines(tmp_path / "sft.jsonl", [chat("a?", "A."), "x" * (MAX_RECORD_BYTES + 1),
                                                chat("b?", "B.")])
    for _ in range(2):  # built, then reused: the same counts either way, and as the list reader's
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="data.loaders"):
            assert len(cached_records(path, SFT, tmp_path / "cache")) == 2
        assert "dropped 1 of 3 SFT records (1 longer than 1 MiB" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data.loaders"):
        assert [r["messages"] for r in load_sft(path)] == [r["messages"] for r in cached_records(path, SFT,
                                                                                                tmp_path / "cache")]


def conversations(n: int) -> list[dict]:
    """Varied lengths: some cut at max_length=48, some with no assistant token inside it, one without answer."""
    out = [chat(f"Question {i}? " + "why " * (i % 30), f"Answer {i}. " + "more " * (i % 17)) for i in range(n)]
    out[3] = chat("Nobody answers.", "")
    return out


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    from pipeline.lm.tokenizer import load_tokenizer

    return load_tokenizer(str(tiny_lm_dir))[0]


def screened_rows(s) -> list:
    return [(r["input_ids"], r["labels"]) for r in s.encoded]


def test_the_streamed_screening_equals_the_in_memory_one_serial_or_on_workers(tmp_path, tok, monkeypatch):
    import data.record_cache
    import stages.sft.dataset as sft_data

    records = conversations(120)
    path = write_lines(tmp_path / "sft.jsonl", records)
    in_memory = sft_data.screen(load_sft(path), tok, max_length=48)
    assert (in_memory.truncated, in_memory.dropped_too_long, in_memory.no_assistant) != (0, 0, 0)
    streamed = sft_data.screen(cached_records(path, SFT, tmp_path / "cache"), tok, max_length=48)
    monkeypatch.setattr(data.record_cache, "PARALLEL_FROM", 10)  # two worker processes on these 120
    monkeypatch.setattr(data.record_cache.os, "cpu_count", lambda: 2)
    on_workers = sft_data.screen(cached_records(path, SFT, tmp_path / "cache2"), tok, max_length=48)
    for s in (streamed, on_workers):
        assert s.counts() == in_memory.counts()
        assert screened_rows(s) == screened_rows(in_memory)
        assert list(s.records) == list(in_memory.records)
    ids, labels = screened_rows(in_memory)[0]
    assert len(ids) <= 48 and ids[-1] == labels[-1] and labels[0] == -100  # the question carries no loss


def test_a_screening_is_reused_for_the_same_settings_and_redone_for_others(tmp_path, tok, monkeypatch):
    import stages.sft.dataset as sft_data

    path = write_lines(tmp_path / "sft.jsonl", conversations(20))
    records = cached_records(path, SFT, tmp_path / "cache")
    first = sft_data.screen(records, tok, max_length=48)

    def no_encoding(*args, **kwargs):
        raise AssertionError("screened again")

    monkeypatch.setattr(sft_data, "_screen_batch", no_encoding)
    assert screened_rows(sft_data.screen(records, tok, max_length=48)) == screened_rows(first)
    with pytest.raises(AssertionError, match="screened again"):
        sft_data.screen(records, tok, max_length=64)
    with pytest.raises(AssertionError, match="screened again"):
        sft_data.screen(records, tok, max_length=48, assistant_only=False)


def test_a_conversation_the_template_cannot_mask_is_named_from_a_worker_too(tmp_path, tok, monkeypatch):
    import data.record_cache
    import stages.sft.dataset as sft_data
    from pipeline.lm.chat_format import MaskError

    def refuse(tokenizer, msgs):
        if msgs[0]["content"].startswith("Question 7?"):
            raise MaskError("the template renders this turn elsewhere")
        return [1, 2], [0, 1]

    monkeypatch.setattr(sft_data, "assistant_mask", refuse)
    monkeypatch.setattr(data.record_cache, "PARALLEL_FROM", 10)
    monkeypatch.setattr(data.record_cache.os, "cpu_count", lambda: 2)
    records = cached_records(write_lines(tmp_path / "sft.jsonl", conversations(20)), SFT, tmp_path / "cache")
    with pytest.raises(UserError, match=r"^the train split, conversation 8: the chat template cannot mark"):
        sft_data.screen(records, tok, max_length=48, source="the train split")


# --- reward pairs: memory-mapped records, encoded by a batched map, exactly as the list path did -------------

def preference_records(n: int) -> list[dict]:
    """Pairwise records with margins, K-way rankings (pairs with rank distances), an HH transcript; some
    prompts long enough to be cut at max_length=48, some answers too long to fit at all."""
    out = []
    for i in range(n):
        question = f"Question {i}? " + "why " * (i % 25)
        if i % 4 == 0:
            out.append({"prompt": question, "responses": [f"Best {i}.", f"Fine {i}. " + "so " * (i % 40) * 2, f"Bad {i}."],
                        "ranking": [0, 1, 2]})
        elif i % 7 == 0:
            out.append({"chosen": f"\n\nHuman: {question}\n\nAssistant: Yes {i}.",
                        "rejected": f"\n\nHuman: {question}\n\nAssistant: No {i}.", "margin": 1.5})
        else:
            out.append({"prompt": question, "chosen": f"Good {i}.", "rejected": f"Poor {i}. " + "meh " * (i % 50),
                        "margin": i / 10})
    return out


def pairs_as_lists(sources: list[str], tok, max_length: int, hold_out: float, seed: int):
    """The reward stage's data path before streaming, kept here as the reference: every pair a dict, every
    encoding a Python list; (trained rows, their prompt indices, counts, held-out pairs)."""
    import random

    from data.feedback import feedback_pairs, is_store
    from pipeline.judge.scoring import encode_conversation

    pairs = []
    for n, source in enumerate(sources):
        read = feedback_pairs(source) if is_store(source) else load_pairs(source)
        pairs += [{**p, "group": f"{n}:{p['group']}"} for p in read]
    groups = sorted({p["group"] for p in pairs})
    random.Random(seed).shuffle(groups)
    held = set(groups[:max(1, round(len(groups) * hold_out))])
    held_pairs = [p for p in pairs if p["group"] in held]
    rows, groups_of_rows, prompt_index, counts = [], [], {}, {"pairs_in": 0, "identical": 0, "truncated": 0, "too_long": 0}
    for p in (p for p in pairs if p["group"] not in held):
        counts["pairs_in"] += 1
        chosen, c_status = encode_conversation(tok, p["prompt"], p["chosen"], max_length)
        rejected, r_status = encode_conversation(tok, p["prompt"], p["rejected"], max_length)
        if chosen == rejected or "too_long" in (c_status, r_status):
            counts["identical" if chosen == rejected else "too_long"] += 1
            continue
        counts["truncated"] += "truncated" in (c_status, r_status)
        margin = p["margin"] if p["margin"] is not None else 0.5 * (p["rank_gap"] - 1)
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "margin": float(margin)})
        groups_of_rows.append(prompt_index.setdefault(p["group"], len(prompt_index)))
    return rows, counts, held_pairs, groups_of_rows


def streamed_pairs(sources: list[str], tok, max_length: int, hold_out: float, seed: int, cache):
    from stages.reward.dataset import load_training_pairs, split_by_group, tokenize_pairs

    train, held = split_by_group(load_training_pairs(sources, cache=cache), hold_out, seed)
    return tokenize_pairs(train, tok, max_length, use_margin=True, source="pairs"), list(held)


@pytest.fixture
def preference_sources(tmp_path):
    from data.feedback import FeedbackStore
    from tests.test_feedback_reward import write_feedback

    records = preference_records(90)
    first = write_lines(tmp_path / "a.jsonl", records[:60])
    second = write_lines(tmp_path / "b.jsonl.gz", records[60:] + records[:5])  # 5 prompts again, another source
    write_feedback(FeedbackStore(tmp_path / "feedback"), 6)
    return [first, second, str(tmp_path / "feedback")]


def test_streamed_reward_pairs_are_the_list_paths_pairs_in_the_same_order_serial_or_on_workers(
        tmp_path, tok, monkeypatch, preference_sources):
    import data.record_cache

    rows, counts, held, groups = pairs_as_lists(preference_sources, tok, 48, hold_out=0.2, seed=3)
    assert counts["truncated"] and counts["too_long"] and len(held) > 10  # the cases this compares
    assert len(set(groups)) < len(groups) < counts["pairs_in"]  # K-way prompts with pairs kept and dropped
    serial = streamed_pairs(preference_sources, tok, 48, 0.2, 3, tmp_path / "cache")
    monkeypatch.setattr(data.record_cache, "PARALLEL_FROM", 10)  # two worker processes encode the pairs
    monkeypatch.setattr(data.record_cache.os, "cpu_count", lambda: 2)
    on_workers = streamed_pairs(preference_sources, tok, 48, 0.2, 3, tmp_path / "cache2")
    for encoded, held_streamed in (serial, on_workers):
        assert list(encoded.dataset(use_margin=True)) == rows  # ids, margins (given or from rank), order
        assert encoded.groups == groups
        assert {k: encoded.counts[k] for k in counts} == counts and encoded.counts["kept"] == len(rows)
        assert [(p["prompt"], p["chosen"], p["rejected"], p["rank_gap"]) for p in held_streamed] == \
            [(p["prompt"], p["chosen"], p["rejected"], p["rank_gap"]) for p in held]


def test_a_rerun_maps_the_cached_pairs_and_encoding_and_other_settings_encode_again(tmp_path, tok, monkeypatch):
    import data.record_cache
    import stages.reward.dataset as reward_data

    path = write_lines(tmp_path / "pairs.jsonl", preference_records(30))
    first = streamed_pairs([path], tok, 48, 0.2, 0, tmp_path / "cache")[0]

    def fail(*args, **kwargs):
        raise AssertionError("read or encoded again")

    monkeypatch.setattr(data.record_cache, "normalized", fail)
    monkeypatch.setattr(reward_data, "_encode_batch", fail)
    again = streamed_pairs([path], tok, 48, 0.2, 0, tmp_path / "cache")[0]
    assert list(again.dataset(True)) == list(first.dataset(True)) and again.counts == first.counts
    with pytest.raises(AssertionError, match="encoded again"):
        streamed_pairs([path], tok, 64, 0.2, 0, tmp_path / "cache")
    with pytest.raises(AssertionError, match="encoded again"):
        streamed_pairs([path], tok, 48, 0.3, 0, tmp_path / "cache")  # another held-out split


def test_the_reward_stages_cache_entries_and_sfts_prune_only_their_own(tmp_path, tok):
    from data.token_cache import prune_cache
    from stages.reward.dataset import load_training_pairs

    cache = tmp_path / "cache"
    sft = cached_records(write_lines(tmp_path / "sft.jsonl", [chat("a?", "A.")]), SFT, cache)
    for i in range(3):  # three versions of the preference file: the reward stage keeps its newest other
        load_training_pairs([write_lines(tmp_path / "pairs.jsonl", preference_records(5 + i))], cache=cache)
    assert len(list(cache.glob("pairs-*"))) == 2
    assert [Path(f["filename"]).exists() for f in sft.cache_files] == [True]
    prune_cache(cache, [Path(sft.cache_files[0]["filename"]).parent], kinds=("records-",), log=lambda _: None)
    assert len(list(cache.glob("pairs-*"))) == 2  # SFT's pruning leaves the reward stage's entries
