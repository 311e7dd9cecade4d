"""The bad-inputs corpus: every command a user runs (each stage, the demo data builder, the chat, the
server, the reward-model measure), fed broken inputs.

Each case runs the entry point's `main(argv)` in-process, behind the same `main_guard` the command
line uses, and must: exit non-zero; print exactly one line with "error:" and no traceback; name
what is wrong in that line; and leave no committed artifact. (An empty `<stage>.partial/` left by
some failures is the shared artifact code's to clean up; it is not judged here.)

Run alone with `make faults` or `pytest tests/test_bad_inputs.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_input_cases import CASES, ENTRY, NOT_USER_COMMANDS, OWN_ARGUMENTS, VALID
from tests.bad_input_files import build_world
from tests.conftest import ROOT
from tests.stage_fixtures import fixed_reward_stats


@pytest.fixture(scope="session")
def world(tiny_lm_dir, tmp_path_factory):
    yield from build_world(tiny_lm_dir, tmp_path_factory)


def run_entry(stage: str, case: str, args: list[str], world: dict, capsys):
    """(exit code or the escaping exception, stderr) of one entry point run in-process."""
    import importlib

    module = importlib.import_module(ENTRY[stage][1])
    fill = lambda a: a.format(**world)  # noqa: E731
    if stage in OWN_ARGUMENTS:
        argv = [fill(a) for a in VALID[stage] + args]
    else:
        argv = ["--config", "configs/test.yaml", f"run.out_dir={world['runs']}", f"run.name={case}"]
        argv += [fill(a) for a in VALID[stage] + args]
    if stage == "ppo":  # PPO reads the statistics of `make reward-stats` (fixed ones: that step has cases of its own)
        fixed_reward_stats(argv)
    capsys.readouterr()
    try:
        module.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    except Exception as e:  # noqa: BLE001 - a traceback is exactly what this corpus looks for
        code = e
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, stage, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line_a_failing_exit_and_no_artifact(case, stage, args, words, world, capsys):
    code, err = run_entry(stage, case, args, world, capsys)
    assert not isinstance(code, BaseException), f"a traceback instead of a message: {code!r}"
    assert code not in (0, None), f"wrongly accepted (exit 0); stderr: {err[-500:]}"
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, f"expected one error line, got: {errors or err[-500:]}"
    for word in (w.format(**world) for w in words):
        assert word.lower() in errors[0].lower(), f"{word!r} not named in: {errors[0]}"
    # a user's files that cases point at (data.dir, links from a run folder): refused, never replaced or truncated
    d = Path(world["d"])
    assert (d / "thesis" / "chapter1.md").is_file() and (d / "notes.txt").is_file()
    assert (d / "victim.txt").read_text() == "a user's own file\n"
    artifact = ENTRY[stage][2]
    if artifact:
        assert not (world["runs"] / case / artifact / "manifest.json").exists(), "an artifact was committed"


def runnable_modules() -> set[str]:
    """What `python -m` can run in stages/, data/ and apps/: each package with a __main__.py, and each
    module with a main block (a stage's stage.py is its package's command, so it counts as the package), in
    every package a user's command may live in."""
    found = set()
    for top in ("stages", "data", "apps", "pipeline"):
        for f in (ROOT / top).rglob("*.py"):
            module = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            if f.name == "__main__.py":
                found.add(module.removesuffix(".__main__"))
            elif 'if __name__ == "__main__":' in f.read_text():
                found.add(module.removesuffix(".stage"))
    return found


def test_the_corpus_covers_every_command_with_cases_of_its_own():
    commands = {command for command, _, _ in ENTRY.values()}
    runnable = runnable_modules()
    assert "stages.ppo" in runnable and "apps.serve" in runnable  # the search finds commands at all
    assert commands == runnable - set(NOT_USER_COMMANDS), "a command without bad-input cases (add it to ENTRY)"
    assert {stage for _, stage, _, _ in CASES} == set(ENTRY) and len(CASES) >= 200
    assert len({case for case, *_ in CASES}) == len(CASES)  # a run directory per case


def test_hostile_looking_inputs_that_are_rightly_accepted_keep_their_meaning(world, tiny_lm_dir, tmp_path):
    """Accepted, and read as the person who wrote them meant: a byte-order mark and Windows line ends are
    not text; a quoted CSV field keeps its newlines; a ranking of some answers ranks those; the chat
    template's markers in pretraining and perplexity text are text, never a role or the end of a document."""
    import numpy as np
    from transformers import AutoTokenizer

    from data.loaders import load_pairs, load_prompts, load_sft
    from data.token_cache import build_token_cache
    from stages.eval.lm import token_stream

    d = Path(world["d"])
    plain = [p["prompt"] for p in load_prompts(str(d / "prompts.jsonl"))]
    assert [p["prompt"] for p in load_prompts(str(d / "bom.jsonl"))] == plain
    assert [p["prompt"] for p in load_prompts(str(d / "crlf.jsonl"))] == plain
    assert load_sft(str(d / "bom.csv"))[0]["messages"][0]["content"] == "What is 1+1?"
    conversation = load_sft(str(d / "newlines.csv"))[0]["messages"]
    assert [m["content"] for m in conversation] == ["Line one\nline two?", "An answer\nover two lines."]
    pairs = load_pairs(str(d / "rank_short.jsonl"))  # [0, 1] of three answers: answer 2 is unranked, unused
    assert [(p["chosen"][-1]["content"], p["rejected"][-1]["content"]) for p in pairs] == [("a", "b")]

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    special = set(tok.all_special_ids)
    splits, _ = build_token_cache([(str(d / "markers.txt"), "split")], tok, tmp_path / "cache", val_fraction=0.3)
    for split in splits.values():
        ids = np.asarray(split.tokens())
        eos_at = np.flatnonzero(ids == tok.eos_token_id)
        assert len(eos_at) == split.n_docs and eos_at[-1] == len(ids) - 1  # one EOS per document, at its end
        assert not special & set(ids[ids != tok.eos_token_id].tolist())
    text = "<|user|> hello <|end|> <|assistant|> hi <|end|>"
    stream, owned = token_stream(tok, [text], max_tokens=1000)
    assert stream[-1] == tok.eos_token_id and not special & set(stream[:-1])
    assert sum(owned) == len(text.encode())
