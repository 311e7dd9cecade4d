"""A run writes and deletes only inside run.out_dir/run.name, and `make clean` deletes this run's artifacts and
nothing else: not the labels people wrote, not files the pipeline did not make, not a folder beside it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.chain.clean import clean
from pipeline.config.loader import load_config
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["../../x", "..", ".", "", "/etc", "a/b", "a\\b", "tab\there"])
def test_a_run_name_that_is_not_one_folder_name_is_refused(name):
    with pytest.raises(UserError, match="run.name"):
        load_config(ROOT / "configs/tiny.yaml", [f"run.name={name}"])


def test_an_empty_out_dir_is_refused():
    with pytest.raises(UserError, match="run.out_dir is empty"):
        load_config(ROOT / "configs/tiny.yaml", ["run.out_dir="])


def _artifact(d: Path, stage: str) -> None:
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"stage": stage, "status": "complete"}))
    (d / "model.safetensors").write_text("w")


def _a_finished_run(run: Path) -> None:
    for stage in ("data", "pretrain", "sft", "rank", "reward", "reward-stats", "ppo", "eval", "rank-r2", "ppo-r2"):
        _artifact(run / stage, stage.split("-r")[0] if stage.endswith("-r2") else stage)
    (run / "ppo-r3.partial" / "checkpoints").mkdir(parents=True)  # a killed round-3 PPO
    (run / "sft.lock").write_text("123\n")
    (run / "cache" / "tokenizer-abc").mkdir(parents=True)
    for labels in ("labels", "labels-r2"):
        (run / labels).mkdir()
        (run / labels / "alice.jsonl").write_text('{"ranking": [[0], [1]]}\n')
    (run / "notes.txt").write_text("mine")  # the user's
    (run / "dpo").mkdir()  # a folder named like a stage, without a manifest: not ours
    (run / "dpo" / "draft.md").write_text("mine")


def test_clean_deletes_the_runs_artifacts_and_keeps_labels_and_what_is_not_ours(tmp_path):
    run = tmp_path / "tiny"
    _a_finished_run(run)
    deleted, kept = clean(run, log=lambda *_: None)
    assert sorted(p.name for p in kept) == ["dpo", "labels", "labels-r2", "notes.txt"]
    assert {"ppo", "ppo-r2", "ppo-r3.partial", "sft.lock", "cache", "reward-stats", "data"} <= {p.name for p in deleted}
    assert (run / "labels" / "alice.jsonl").read_text() == '{"ranking": [[0], [1]]}\n'
    assert (run / "dpo" / "draft.md").is_file()


def test_clean_removes_the_run_folder_only_when_nothing_is_left(tmp_path):
    run = tmp_path / "tiny"
    _artifact(run / "sft", "sft")
    clean(run, log=lambda *_: None)
    assert not run.exists() and tmp_path.exists()


def _make(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(ROOT), "clean", *args, f"PY={sys.executable}"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_make_clean_with_a_space_in_out_deletes_only_inside_the_run(tmp_path):
    out = tmp_path / "My Runs"
    _a_finished_run(out / "tiny")
    (tmp_path / "My").mkdir()  # what `rm -rf /x/My Runs/tiny` would have hit
    (tmp_path / "My" / "keep.txt").write_text("mine")
    _artifact(out / "other" / "ppo", "ppo")  # another preset's run
    proc = _make(f"OUT={out}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "My" / "keep.txt").is_file() and (out / "other" / "ppo" / "manifest.json").is_file()
    assert not (out / "tiny" / "ppo").exists() and (out / "tiny" / "labels" / "alice.jsonl").is_file()
    assert "kept" in proc.stdout and "labels" in proc.stdout


@pytest.mark.parametrize("args", [["NAME="], ["OUT="], ["CONFIG=configs/"], ["NAME=../.."]])
def test_make_clean_refuses_an_empty_or_escaping_name_and_deletes_nothing(tmp_path, args):
    out = tmp_path / "runs"
    _a_finished_run(out / "tiny")
    before = sorted(str(p) for p in out.rglob("*"))
    proc = _make(f"OUT={out}", *args) if "OUT=" not in args else _make(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr
    assert sorted(str(p) for p in out.rglob("*")) == before
