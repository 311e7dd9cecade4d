"""Feedback in the terminal chat, typed through stdin as a person types it: /alt K shows K answers to the
last message and stores the ranking typed as in the rank stage's terminal labeler; /good and /bad
store a rating of the last answer; a bad order is refused and asked again; --no-feedback stores nothing.
A model from a run stores into the run's feedback folder."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from eval_fixtures import lively_copy

from data.feedback import read_store

ROOT = Path(__file__).resolve().parents[1]


def run_chat(model, *args, stdin: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "apps.chat", "--model", str(model), "--max-new-tokens", "8",
                           "--temperature", "1.2", "--seed", "3", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=env)


def test_alt_good_and_bad_through_stdin_are_stored_in_the_runs_feedback_folder(tiny_lm_dir, tmp_path):
    model = lively_copy(tiny_lm_dir, tmp_path / "tiny" / "sft", seed=5)
    (model / "manifest.json").write_text(json.dumps({"stage": "sft", "status": "complete", "fingerprint": "f" * 16}))
    script = "What does len do?\n/good short and right\n/alt 3\n2 2\n3 1=2\nAnd str?\n/bad\n/alt 2\nx\n"
    res = run_chat(model, "--labeler", "ada", stdin=script)
    assert res.returncode == 0, res.stderr
    assert "not stored: a number appears twice" in res.stderr  # "2 2": asked again
    assert "stored: 3 1=2; the conversation goes on with answer [3]" in res.stderr
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr
    stored = read_store(tmp_path / "tiny" / "feedback")
    first = [{"role": "user", "content": "What does len do?"}]
    good, bad = stored.ratings
    assert good["good"] is True and good["reason"] == "short and right" and good["prompt"] == first
    assert bad["good"] is False and bad["prompt"][-1] == {"role": "user", "content": "And str?"}
    ranked, all_bad = stored.rankings
    assert ranked["ranking"] == [[2], [0, 1]] and len(ranked["responses"]) == 3 and ranked["prompt"] == first
    assert ranked["labeler"] == "ada@chat" and ranked["answers"][0]["model_fingerprint"] == "f" * 16
    assert ranked["answers"][0]["sampling"]["temperature"] == 1.2
    # the conversation went on with the answer ranked best: the next question's history holds it
    assert bad["prompt"][1] == {"role": "assistant", "content": ranked["responses"][2]}
    assert all_bad["all_bad"] is True and all_bad["ranking"] == [[0, 1]]
    assert all_bad["prompt"][-1]["content"] == "And str?"
    # the answers shown were the ones stored
    assert all(f"[{n}]\n" + textwrap.indent(text or "(empty answer)", "    ") in res.stdout
               for n, text in enumerate(ranked["responses"], 1))


def test_no_feedback_stores_nothing_and_says_so(tiny_lm_dir, tmp_path, monkeypatch, capsys):
    from apps.chat import main

    model = lively_copy(tiny_lm_dir, tmp_path / "tiny" / "sft", seed=5)
    (model / "manifest.json").write_text(json.dumps({"stage": "sft", "status": "complete", "fingerprint": "f" * 16}))
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/good\n/alt 2\n"))  # piped input, in this process
    main(["--model", str(model), "--max-new-tokens", "4", "--no-feedback"])
    assert capsys.readouterr().err.count("feedback: off (--no-feedback)") == 3  # the banner, then each command
    assert not (tmp_path / "tiny" / "feedback").exists()
