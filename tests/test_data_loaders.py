"""Loaders accept the common public formats, from every local file type, and reject bad records
with the file, the line and the accepted formats."""

import csv
import gzip
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.loaders import iter_texts, load_pairs, load_prompts, load_rankings, load_sft
from pipeline.errors import UserError

USER = {"role": "user", "content": "What does len do?"}
ASSISTANT = {"role": "assistant", "content": "Return the number of items in a container."}


def write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


# --- SFT -------------------------------------------------------------------------------------

def test_sft_formats_all_become_messages(tmp_path):
    records = [
        {"messages": [USER, ASSISTANT]},
        {"prompt": "What does len do?", "completion": "Return the number of items in a container."},
        {"prompt": [USER], "completion": [ASSISTANT]},
        {"instruction": "What does len do?", "input": "", "output": "Return the number of items in a container."},
    ]
    out = load_sft(write_jsonl(tmp_path / "sft.jsonl", records))
    assert out == [{"messages": [USER, ASSISTANT]}] * 4
    alpaca = load_sft(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Sum these.", "input": "1, 2",
                                                           "output": "3"}]))
    assert alpaca[0]["messages"][0]["content"] == "Sum these.\n\n1, 2"


def test_sft_reads_json_csv_parquet_and_gzip(tmp_path):
    rec = {"messages": [USER, ASSISTANT]}
    (tmp_path / "s.json").write_text(json.dumps([rec, rec]))
    with open(tmp_path / "s.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        w.writeheader()
        w.writerow({"prompt": "What does len do?", "completion": ASSISTANT["content"]})
    pq.write_table(pa.Table.from_pylist([{"prompt": "What does len do?", "completion": ASSISTANT["content"]}]),
                   tmp_path / "s.parquet")
    expected = {"messages": [USER, ASSISTANT]}
    assert load_sft(str(tmp_path / "s.json")) == [expected, expected]
    assert load_sft(str(tmp_path / "s.csv")) == [expected]
    assert load_sft(str(tmp_path / "s.parquet")) == [expected]
    assert load_sft(write_jsonl(tmp_path / "s.jsonl.gz", [rec], gz=True)) == [expected]


def test_bad_sft_records_name_file_line_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [USER, ASSISTANT]}, {"question": "hi", "answer": "yo"}])
    with pytest.raises(UserError, match=r"bad\.jsonl, line 2: no known SFT fields.*Accepted SFT formats.*Alpaca"):
        load_sft(path)
    (tmp_path / "broken.jsonl").write_text(json.dumps({"messages": [USER, ASSISTANT]}) + "\n{not json\n")
    with pytest.raises(UserError, match=r"broken\.jsonl, line 2: not valid JSON"):
        load_sft(str(tmp_path / "broken.jsonl"))
    path = write_jsonl(tmp_path / "noanswer.jsonl", [{"messages": [USER]}])
    with pytest.raises(UserError, match="no assistant message"):
        load_sft(path)
    path = write_jsonl(tmp_path / "role.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(UserError, match="role 'robot'"):
        load_sft(path)


def test_missing_paths_binary_files_and_offline_hub_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_sft(str(tmp_path / "nope.jsonl"))
    (tmp_path / "bin.jsonl").write_bytes(b"\x00\x01\x02\xff" * 100)
    with pytest.raises(UserError, match="binary"):
        load_sft(str(tmp_path / "bin.jsonl"))
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="line 1: not UTF-8"):
        load_sft(str(tmp_path / "latin1.jsonl"))
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="gzip"):
        load_sft(str(tmp_path / "fake.jsonl.gz"))
    # conftest sets HF_DATASETS_OFFLINE=1: the real hub code path must fail with advice, not a traceback
    with pytest.raises(UserError, match="Could not load the hub dataset 'nobody/no-such-dataset'.*local file"):
        load_sft("nobody/no-such-dataset:train")


# --- preferences -----------------------------------------------------------------------------

def test_pairwise_strings_and_message_lists(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "What does len do?", "chosen": "Counts items.", "rejected": "Sorts a list.", "margin": 2},
        {"prompt": [USER], "chosen": [USER, ASSISTANT],  # UltraFeedback repeats the prompt in chosen/rejected
         "rejected": [USER, {"role": "assistant", "content": "No idea."}], "score_chosen": 8, "score_rejected": 3},
        {"prompt": "\n\nHuman: What does len do?\n\nAssistant:", "chosen": " Counts items.", "rejected": " Hm."},
    ])
    first, second, third = load_pairs(path)
    assert first["prompt"] == [USER] and first["chosen"] == [{"role": "assistant", "content": "Counts items."}]
    assert first["margin"] == 2.0 and first["rank_gap"] is None
    assert second["chosen"] == [ASSISTANT] and second["rejected"][0]["content"] == "No idea."
    assert second["margin"] == 5.0 and first["group"] == second["group"] == third["group"]
    assert third["prompt"] == [USER] and third["chosen"] == [{"role": "assistant", "content": " Counts items."}]


def test_hh_transcripts_split_the_shared_prefix_into_the_prompt(tmp_path):
    prefix = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What does len do?"
    path = write_jsonl(tmp_path / "hh.jsonl.gz", [
        {"chosen": prefix + "\n\nAssistant: It counts items.", "rejected": prefix + "\n\nAssistant: Go away."},
        {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: C\n\nAssistant: D"},  # no shared prompt
        {"chosen": prefix + "\n\nAssistant: Same.", "rejected": prefix + "\n\nAssistant: Same."},
    ], gz=True)
    pairs = load_pairs(path)
    assert len(pairs) == 1
    assert [m["role"] for m in pairs[0]["prompt"]] == ["user", "assistant", "user"]
    assert pairs[0]["prompt"][2]["content"] == "What does len do?"
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "It counts items."}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "Go away."}]


def test_dropped_pairs_are_counted_and_reported(tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: C\n\nAssistant: D"},
    ])
    with caplog.at_level(logging.WARNING, logger="data.loaders"):
        assert len(load_pairs(path)) == 1
    assert "dropped 2 of 3" in caplog.text and "chosen == rejected" in caplog.text
    assert "share no user turn" in caplog.text
    only_bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "x"}])
    with pytest.raises(UserError, match="no usable preference records.*1 chosen == rejected"):
        load_pairs(only_bad)


def test_k_way_rankings_expand_to_every_pair(tmp_path):
    rec = {"prompt": "What does len do?", "responses": ["bad", "best", "ok", "worst"], "ranking": [1, 2, 0, 3]}
    path = write_jsonl(tmp_path / "k.jsonl", [rec])
    pairs = load_pairs(path)
    assert len(pairs) == 6
    got = {(p["chosen"][0]["content"], p["rejected"][0]["content"], p["rank_gap"]) for p in pairs}
    assert ("best", "worst", 3) in got and ("ok", "bad", 1) in got and ("bad", "worst", 1) in got
    assert len({p["group"] for p in pairs}) == 1
    rankings = load_rankings(path)
    assert rankings == [{"prompt": [USER], "responses": rec["responses"], "ranking": [1, 2, 0, 3],
                         "groups": [[1], [2], [0], [3]]}]


def test_tied_answers_form_no_pair_among_themselves(tmp_path):
    rec = {"prompt": "What does len do?", "responses": ["bad", "best", "ok", "also ok"], "ranking": [[1], [2, 3], [0]]}
    path = write_jsonl(tmp_path / "t.jsonl", [rec, {**rec, "ranking": [[0, 1, 2, 3]]}])
    got = {(p["chosen"][0]["content"], p["rejected"][0]["content"], p["rank_gap"]) for p in load_pairs(path)}
    assert got == {("best", "ok", 1), ("best", "also ok", 1), ("best", "bad", 2), ("ok", "bad", 1),
                   ("also ok", "bad", 1)}  # the all-tied record gives nothing (dropped and counted)
    assert load_rankings(path)[0]["groups"] == [[1], [2, 3], [0]]


@pytest.mark.parametrize("ranking, message", [
    ([0, 0, 1], "repeats an index"),
    ([[0], [0, 1]], "repeats an index"),
    ([[0], []], "groups of tied"),
    ([0, 1, 5], r"out-of-range indices \[5\]"),
    ("0,1,2", "list of response indices"),
])
def test_bad_rankings_name_the_line(tmp_path, ranking, message):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 1, 0]},
        {"prompt": "q", "responses": ["a", "b", "c"], "ranking": ranking},
    ])
    with pytest.raises(UserError, match=r"r\.jsonl, line 2: .*" + message):
        load_rankings(path)
    with pytest.raises(UserError, match=r"line 2"):
        load_pairs(path)


def test_rankings_loader_rejects_plain_pairs_and_reads_csv(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(UserError, match=r'line 1: K-way record without "responses".*Accepted ranking formats'):
        load_rankings(path)
    with open(tmp_path / "r.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "responses", "ranking"])
        w.writerow(["q", json.dumps(["a", "b"]), "[1, 0]"])
    assert load_rankings(str(tmp_path / "r.csv"))[0]["ranking"] == [1, 0]


# --- prompts -----------------------------------------------------------------------------------

def test_prompts_from_strings_messages_alpaca_and_text_lines(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "What does len do?"},
        {"prompt": [USER], "gold": "Counts."},
        {"messages": [USER, ASSISTANT]},
        {"instruction": "What does len do?", "output": "Counts."},
        {"prompt": "\n\nHuman: What does len do?\n\nAssistant:"},  # HH-style prompt
    ])
    out = load_prompts(path)
    assert all(p["prompt"] == [USER] for p in out)
    assert [p["gold"] for p in out] == [None, "Counts.", ASSISTANT["content"], "Counts.", None]
    with pytest.raises(UserError, match="demo_file"):
        load_prompts("demo")
    (tmp_path / "p.txt").write_text("What does len do?\n\nWhat does zip do?\n")
    assert [p["prompt"][0]["content"] for p in load_prompts(str(tmp_path / "p.txt"))] == [
        "What does len do?", "What does zip do?"]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": [USER, ASSISTANT]}])
    with pytest.raises(UserError, match="end with a user message"):
        load_prompts(bad)
    with pytest.raises(UserError, match="plain text"):
        load_sft(str(tmp_path / "p.txt"))


# --- pretraining text ----------------------------------------------------------------------------

def test_iter_texts_from_txt_jsonl_parquet_folders_and_globs(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("First doc line one.\nline two.\n\n\nSecond doc.\n<|endoftext|>\nThird doc.\n")
    write_jsonl(corpus / "b.jsonl.gz", [{"text": "Fourth doc."}, {"text": ""}, {"text": "Fifth doc."}], gz=True)
    pq.write_table(pa.Table.from_pylist([{"body": "Sixth doc."}]), tmp_path / "c.parquet")
    docs = list(iter_texts([str(corpus)]))
    assert docs == ["First doc line one.\nline two.", "Second doc.", "Third doc.", "Fourth doc.", "Fifth doc."]
    assert list(iter_texts([str(corpus / "*.txt")])) == docs[:3]
    assert list(iter_texts(str(tmp_path / "c.parquet"), text_field="body")) == ["Sixth doc."]
    with pytest.raises(UserError, match=r'c\.parquet \(row 1\), line 1: no text field "text" \(found: body\)'):
        list(iter_texts([str(tmp_path / "c.parquet")]))


def test_iter_texts_rejects_missing_empty_and_binary_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list(iter_texts([str(tmp_path / "missing.txt")]))
    with pytest.raises(UserError, match="matches no file"):
        list(iter_texts([str(tmp_path / "*.txt")]))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="holds no text documents"):
        list(iter_texts([str(tmp_path / "empty.txt")]))
    (tmp_path / "model.txt").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(UserError, match="binary"):
        list(iter_texts([str(tmp_path / "model.txt")]))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="folder without data files"):
        list(iter_texts([str(tmp_path / "empty_dir")]))


def test_a_document_over_the_size_bound_is_cut_into_bounded_pieces_counted_and_nothing_lost(
        tmp_path, monkeypatch, caplog):
    import data.loaders as loaders

    monkeypatch.setattr(loaders, "MAX_DOCUMENT_CHARS", 200)
    lines = [f"line {i} of a file with no blank lines {'word ' * (i % 9)}\n" for i in range(80)]
    (tmp_path / "one.txt").write_text("A short document.\n\n" + "".join(lines) + "\nThe last one.\n")
    write_jsonl(tmp_path / "one.jsonl", [{"text": "x" * 450}, {"text": "short"}])
    with caplog.at_level("WARNING"):
        docs = list(iter_texts([str(tmp_path / "one.txt")]))
        records = list(iter_texts([str(tmp_path / "one.jsonl")]))
    assert docs[0] == "A short document." and docs[-1] == "The last one."
    assert all(len(d) <= 200 for d in docs) and len(docs) > 10
    assert "".join(docs[1:-1]) == "".join(lines).rstrip("\n")  # cut at line breaks, not a character lost
    assert records == ["x" * 200, "x" * 200, "x" * 50, "short"]  # no break to cut at: cut at the bound
    assert f"one.txt: cut 1 text over 200 characters (no blank lines?) into {len(docs) - 2} pieces" in caplog.text
    assert "one.jsonl: cut 1 text over 200 characters (no blank lines?) into 3 pieces" in caplog.text


def test_a_line_that_is_not_utf8_is_named_by_its_number(tmp_path):
    (tmp_path / "mixed.txt").write_bytes(b"line one\n" * 3000 + "caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"mixed\.txt, line 3001: not UTF-8"):
        list(iter_texts([str(tmp_path / "mixed.txt")]))


def test_a_csv_cell_longer_than_the_csv_module_default_still_loads(tmp_path):
    answer = "word " * 40_000  # 200 KB: over csv's 128 KiB default field limit
    (tmp_path / "long.csv").write_text(f'prompt,chosen,rejected\nWhy?,"{answer}",No.\n')
    assert load_pairs(str(tmp_path / "long.csv"))[0]["chosen"][0]["content"] == answer
