"""Artifacts: built in a scratch directory, committed atomically with a manifest, refused when unfinished."""

import json

import pytest

from pipeline.artifacts.store import (
    ArtifactWriter,
    fingerprint,
    is_complete,
    require_artifact,
    start_artifact,
)
from pipeline.errors import UserError


def build(final, content="weights", config=None, inputs=None):
    writer = ArtifactWriter(final, "pretrain")
    (writer.out_dir / "model.bin").write_text(content)
    (writer.checkpoint_dir / "latest.pt").write_text("resumable state")
    return writer, writer.commit(config=config or {"model": {"n_layer": 2}}, inputs=inputs or {"data": "abc"},
                                 metrics={"val_loss": 1.5})


def test_nothing_is_visible_until_commit(tmp_path):
    final = tmp_path / "run" / "pretrain"
    writer = ArtifactWriter(final, "pretrain")
    (writer.out_dir / "model.bin").write_text("half written")
    assert not final.exists()  # a killed stage leaves only pretrain.partial/
    with pytest.raises(UserError, match="make pretrain") as e:
        require_artifact(final, "make pretrain")
    assert "resume" in str(e.value)  # and says an unfinished run can be resumed


def test_commit_moves_the_artifact_in_place_with_a_manifest(tmp_path):
    final = tmp_path / "pretrain"
    writer, path = build(final)
    assert path == final and (final / "model.bin").read_text() == "weights"
    assert not writer.work_dir.exists()  # checkpoints are not part of the artifact
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["status"] == "complete"
    assert manifest["inputs"] == {"data": "abc"} and manifest["metrics"] == {"val_loss": 1.5}
    assert manifest["fingerprint"] == fingerprint(final)  # the manifest itself is not hashed
    assert manifest["versions"]["torch"] and "wall_time_s" in manifest
    assert require_artifact(final, "make pretrain")["stage"] == "pretrain"


def test_recommit_replaces_the_old_artifact(tmp_path):
    final = tmp_path / "pretrain"
    build(final, "old")
    build(final, "new")
    assert (final / "model.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrain"]


def test_a_directory_without_a_complete_manifest_is_refused(tmp_path):
    final = tmp_path / "pretrain"
    final.mkdir()
    (final / "model.bin").write_text("?")
    assert not is_complete(final)
    with pytest.raises(UserError, match="not a finished artifact"):
        require_artifact(final, "make pretrain")


def test_fingerprint_follows_content_not_time(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("hello")
    first = fingerprint(a)
    a.write_text("hello")
    assert fingerprint(a) == first
    a.write_text("hello!")
    assert fingerprint(a) != first


def test_a_commit_records_the_declared_key_that_the_up_to_date_check_compares(tmp_path):
    key = {"config": {"model": {"n_layer": 2}}, "inputs": {"data": {"a.txt": "abc"}}}
    writer = start_artifact(tmp_path / "pretrain", "pretrain", resume=True, key=key)
    (writer.out_dir / "w.bin").write_text("w")
    writer.commit(config={"model": {"n_layer": 2}, "sft": {"lr": 0.1}})
    manifest = json.loads((tmp_path / "pretrain" / "manifest.json").read_text())
    assert manifest["key"] == key and manifest["config"]["sft"] == {"lr": 0.1}  # the whole config, for provenance


def test_wall_time_after_a_resume_counts_every_process_that_worked_on_the_artifact(tmp_path, monkeypatch):
    import os

    from pipeline.artifacts import store

    now = [1000.0]
    monkeypatch.setattr(store.time, "time", lambda: now[0])
    final = tmp_path / "runs" / "t" / "sft"
    first = store.start_artifact(final, "sft", resume=True)
    checkpoint = first.checkpoint_dir / "step-1.pt"
    checkpoint.write_text("resumable state")
    os.utime(checkpoint, (1060.0, 1060.0))  # its last write, a minute in; killed at 1090: nothing committed
    now[0] = 5000.0  # started again an hour later, resuming the same work dir
    second = store.start_artifact(final, "sft", resume=True)
    now[0] = 5040.0
    second.commit(config={})
    assert store.read_manifest(final)["wall_time_s"] == 100.0  # 60 s up to the kill's last checkpoint + 40 s

    # a fresh start (resume=false) throws the earlier work away, and its time with it
    now[0] = 7000.0
    killed = store.start_artifact(final, "sft", resume=True)
    (killed.checkpoint_dir / "step-1.pt").write_text("resumable state")
    os.utime(killed.checkpoint_dir / "step-1.pt", (7500.0, 7500.0))
    now[0] = 8000.0
    fresh = store.start_artifact(final, "sft", resume=False)
    now[0] = 8030.0
    fresh.commit(config={})
    assert store.read_manifest(final)["wall_time_s"] == 30.0
