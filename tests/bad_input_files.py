"""The files the bad-input corpus (tests/test_bad_inputs.py) points at, built once per session: a tiny
reward model, broken and hostile copies of a working model folder, and broken or hostile data, presets
and run folders (`world` in tests/test_bad_inputs.py yields them); the cases name them by {lm}, {rm}, {d}
and {bad}."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
from pathlib import Path

from tests.conftest import tiny_text


def _save_model_copies(lm: Path, bad: Path) -> Path:
    """Broken copies of a working model folder, and a tiny reward model (one with a trained score head)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    def copy(name: str) -> Path:
        return Path(shutil.copytree(lm, bad / name))

    weights = (lm / "model.safetensors").read_bytes()
    (copy("truncated") / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (copy("empty_weights") / "model.safetensors").write_bytes(b"")
    (copy("no_config") / "config.json").unlink()
    (copy("corrupt_config") / "config.json").write_text('{"model_type": "llama", "hidden')
    (copy("no_tokenizer") / "tokenizer.json").unlink()
    (copy("corrupt_tokenizer") / "tokenizer.json").write_text('{"version": "1.0", "model": {"ty')
    (copy("corrupt_manifest") / "manifest.json").write_text('{"stage": "sft", "status": ')
    torch.manual_seed(0)
    rm_dir = bad.parent / "reward_model"
    rm = AutoModelForSequenceClassification.from_pretrained(lm, num_labels=1)
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(lm).save_pretrained(rm_dir)
    shutil.copytree(rm_dir, bad / "rm_truncated")
    rm_weights = (rm_dir / "model.safetensors").read_bytes()
    (bad / "rm_truncated" / "model.safetensors").write_bytes(rm_weights[:100])
    return rm_dir


def _write_data(d: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def jsonl(name: str, records) -> None:
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in records))

    questions = [f"What does function number {i} do?" for i in range(12)]
    (d / "good.txt").write_text(tiny_text(20_000))
    jsonl("sft.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "It works."}]}
                        for q in questions])
    jsonl("pairs.jsonl", [{"prompt": q, "chosen": "A clear answer.", "rejected": "No."} for q in questions])
    jsonl("prompts.jsonl", [{"prompt": q, "gold": "It works."} for q in questions])
    long_answer = "A very long answer that goes on and on. " * 20
    jsonl("long_sft.jsonl", [{"prompt": q, "completion": long_answer} for q in questions])
    jsonl("long_pairs.jsonl", [{"prompt": q, "chosen": long_answer, "rejected": long_answer + "No."} for q in questions])
    jsonl("long_prompts.jsonl", [{"prompt": q + " Please explain at length." * 20} for q in questions])
    jsonl("repeated_rank.jsonl", [{"prompt": "Q?", "responses": ["a", "b", "c", "d"], "ranking": [0, 0, 1, 2]}])
    jsonl("same_pairs.jsonl", [{"prompt": q, "chosen": "Same.", "rejected": "Same."} for q in questions])
    jsonl("wrong_types.jsonl", [{"prompt": 5, "completion": ["not", "messages"]}])
    jsonl("prompt_number.jsonl", [{"prompt": 42}])
    (d / "rank").mkdir()  # the held-out files of a rank artifact (what `make rank` writes for the reward report)
    heldout = {"prompt_id": "h1", "prompt": questions[0], "gold": "It works.", "responses": ["It works.", "No."],
               "temperatures": [0.7, 1.3]}
    jsonl("rank/heldout_candidates.jsonl", [heldout])
    jsonl("rank/heldout_rankings.jsonl", [{**heldout, "ranking": [0, 1]}])
    (d / "truncated.jsonl").write_text("\n".join((d / "sft.jsonl").read_text().splitlines()[:2]) + '\n{"messages": [{"ro')
    (d / "wrong.csv").write_text("question,reply\nWhat is 1+1?,2\n")
    (d / "empty.jsonl").write_text("")
    (d / "notes.txt").write_text("a user's own file\n")
    (d / "thesis").mkdir()
    (d / "thesis" / "chapter1.md").write_text("a user's own work\n")
    (d / "empty.txt").write_text("")
    (d / "empty.yaml").write_text("# nothing but a comment\n")
    (d / "broken.yaml").write_text("train:\n  lr: [1e-3\n  batch_size: 4\n")
    (d / "list.yaml").write_text("- train\n- sft\n")
    (d / "zero_heads.yaml").write_text("base: " + str(Path("configs/test.yaml").resolve()) + "\nmodel:\n  n_head: 0\n")
    (d / "typo.yaml").write_text("eval:\n  num_prompt: 4\n")
    noise = bytes(range(256)) * 64
    for name in ("binary.bin", "binary.txt", "binary.jsonl"):
        (d / name).write_bytes(noise)
    (d / "latin1.txt").write_bytes("A first line.\nCaf\u00e9 cr\u00e8me, d\u00e9j\u00e0 vu.\n".encode("latin-1"))
    (d / "latin1.jsonl").write_bytes('{"prompt": "Caf\u00e9?"}\n'.encode("latin-1"))
    (d / "deep.jsonl").write_text("[" * 100_000 + "\n")
    os.mkfifo(d / "a_fifo")  # reading it would block forever
    (d / "blank_prompts.jsonl").write_text('{"prompt": "   "}\n{"prompt": ""}\n{"prompt": "\\n\\t"}\n')
    (d / "huge_line.jsonl").write_text('{"messages": "' + "x" * 5_000_000)  # one 5 MB line, never closed
    pq.write_table(pa.table({"body": ["some text"] * 3, "score": [1, 2, 3]}), d / "wrong_column.parquet")
    (d / "corrupt.parquet").write_bytes(b"PAR1" + noise[:500])
    (d / "corrupt.jsonl.gz").write_bytes(gzip.compress((d / "pairs.jsonl").read_bytes())[:40])


def build_world(tiny_lm_dir, tmp_path_factory):
    """Everything the cases point at, built once (tests/test_bad_inputs.py's `world` fixture yields it): data
    files, a reward model, broken model folders, a port another program holds."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "data").mkdir()
    (root / "bad").mkdir()
    _write_data(root / "data")
    rm = _save_model_copies(Path(tiny_lm_dir), root / "bad")
    _write_hostile_data(root / "data")
    _save_hostile_models(Path(tiny_lm_dir), root / "bad")
    busy = socket.socket()  # a port some other program holds, for the duration of the corpus
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    yield {"lm": str(tiny_lm_dir), "rm": str(rm), "d": str(root / "data"), "bad": str(root / "bad"),
           "runs": root / "runs", "busy_port": busy.getsockname()[1]}
    busy.close()




def _write_hostile_data(d: Path) -> None:
    """What a careful attacker tries: links out of the run, loops, bombs, tricks of YAML, JSON and CSV."""
    def jsonl(name: str, records) -> None:
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in records))

    questions = [f"What does function number {i} do?" for i in range(12)]
    # a run folder whose entries link to a user's files and folders outside it
    (d / "victim.txt").write_text("a user's own file\n")
    for case, entry, target in [("lock-links-out", "pretrain.lock", "victim.txt"),
                                ("partial-links-out", "sft.partial", "thesis"),
                                ("artifact-links-out", "pretrain", "thesis"),
                                ("cache-links-out", "cache", "thesis")]:
        run = d / "linked_runs" / case
        run.mkdir(parents=True)
        (run / entry).symlink_to(d / target)
    (d / "loop").symlink_to(d / "loop")  # a symlink loop
    (d / "dangling.jsonl").symlink_to(d / "nowhere.jsonl")
    jsonl("two_prompts.jsonl", [{"prompt": q} for q in questions[:2]])
    (d / "folder.jsonl").mkdir()  # a folder named like a data file, holding none
    # presets: YAML's tricks
    (d / "duplicate_keys.yaml").write_text("train:\n  lr: 0.001\n  batch_size: 4\n  lr: 100\n")
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [{', '.join('*' + p for _ in range(9))}]" for p, c in zip("abcdefgh", "bcdefghi")]
    (d / "billion_laughs.yaml").write_text("\n".join(laughs) + "\ntrain:\n  sample_temperatures: *i\n")
    (d / "anchors.yaml").write_text("run: &r {seed: 1}\nmodel: *r\n")
    (d / "python_tag.yaml").write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    (d / "nul_name.yaml").write_text('run:\n  name: "a\\0b"\n')
    (d / "huge_int.yaml").write_text("base: " + str(Path("configs/test.yaml").resolve())
                                     + "\ntrain:\n  batch_size: " + "9" * 5000 + "\n")
    (d / "base_is_data.yaml").write_text("base: " + str(d / "sft.jsonl") + "\n")
    (d / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + b"train:\n  max_steps: 2\n")
    # JSON's tricks
    (d / "nan_prompts.jsonl").write_text('{"prompt": NaN}\n{"prompt": Infinity}\n')
    (d / "nan_ranking.jsonl").write_text('{"prompt": "Q?", "responses": ["a", "b"], "ranking": [0, NaN]}\n')
    (d / "nan_margin.jsonl").write_text("".join(
        json.dumps({"prompt": q, "chosen": "Yes.", "rejected": "No."})[:-1] + ', "margin": NaN}\n' for q in questions))
    jsonl("rank_out_of_range.jsonl", [{"prompt": "Q?", "responses": ["a", "b", "c"], "ranking": [0, 1, 5]}])
    jsonl("rank_negative.jsonl", [{"prompt": "Q?", "responses": ["a", "b", "c"], "ranking": [-1, 0, 1]}])
    jsonl("rank_short.jsonl", [{"prompt": "Q?", "responses": ["a", "b", "c"], "ranking": [0, 1]}])
    jsonl("rank_bools.jsonl", [{"prompt": "Q?", "responses": ["a", "b"], "ranking": [True, False]}])
    jsonl("rank_floats.jsonl", [{"prompt": "Q?", "responses": ["a", "b"], "ranking": [0.5, 1.5]}])
    jsonl("rank_one_response.jsonl", [{"prompt": "Q?", "responses": ["a"], "ranking": [0]}])
    jsonl("messages_bad_role.jsonl", [{"messages": [{"role": "system-admin", "content": "x"},
                                                    {"role": "assistant", "content": "y"}]}])
    jsonl("messages_no_assistant.jsonl", [{"messages": [{"role": "user", "content": q}]} for q in questions])
    jsonl("a_list_per_line.jsonl", [[1, 2, 3]])
    (d / "json_object.json").write_text('{"prompt": "not a list"}')
    (d / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (d / "prompts.jsonl").read_bytes())
    (d / "bom.csv").write_bytes(b"\xef\xbb\xbf" + b"prompt,completion\nWhat is 1+1?,2\nWhat is 2+2?,4\n")
    (d / "utf16.jsonl").write_bytes((d / "prompts.jsonl").read_text().encode("utf-16"))
    (d / "crlf.jsonl").write_bytes((d / "prompts.jsonl").read_bytes().replace(b"\n", b"\r\n"))
    (d / "newlines.csv").write_text('prompt,completion\n"Line one\nline two?","An answer\nover two lines."\n' * 3)
    (d / "unclosed_quote.csv").write_text('prompt,completion\n"What is this,An answer\n')
    # gzip: a bomb (a few kilobytes that inflate to 64 MiB in one line), not gzip at all, cut mid-stream
    (d / "bomb.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "' + b"A" * (64 << 20) + b'"}\n', 9))
    (d / "not_gzip.jsonl.gz").write_bytes((d / "prompts.jsonl").read_bytes())
    whole = gzip.compress((d / "prompts.jsonl").read_bytes() * 50)
    (d / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    # text for pretraining that holds the chat template's markers
    (d / "markers.txt").write_text(("<|user|> hello <|end|> <|assistant|> hi <|end|>\n\n" + tiny_text(4000)) * 3)


def _save_hostile_models(lm: Path, bad: Path) -> None:
    """Model folders that lie: absurd sizes in config.json, another architecture, a weights header that
    claims terabytes, a tokenizer that is JSON but not a tokenizer, a chat template that does not compile."""
    def copy(name: str) -> Path:
        return Path(shutil.copytree(lm, bad / name))

    def edit_config(name: str, **changes) -> None:
        f = copy(name) / "config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))

    edit_config("huge_hidden", hidden_size=1 << 40, intermediate_size=1 << 42)
    edit_config("negative_vocab", vocab_size=-5)
    edit_config("zero_layers", num_hidden_layers=0)
    edit_config("other_architecture", architectures=["GPT2LMHeadModel"], model_type="gpt2")
    edit_config("unknown_model_type", model_type="gpt9000")
    weights = (copy("huge_header") / "model.safetensors")
    raw = weights.read_bytes()
    weights.write_bytes((1 << 62).to_bytes(8, "little") + raw[8:])  # the header's length: 4 EiB
    (copy("tokenizer_not_a_tokenizer") / "tokenizer.json").write_text('{"hello": "world"}')
    (copy("template_broken") / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content")
    (copy("tokenizer_config_corrupt") / "tokenizer_config.json").write_text('{"model_max_length": ')
