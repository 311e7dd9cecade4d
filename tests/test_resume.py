"""The run mechanisms every stage shares (pipeline.artifacts.resume, pipeline.artifacts.atomic, pipeline.artifacts.finite, artifacts):
a keyed resume, crash-safe swaps, appended metrics, finite or nothing, one run per directory, and
never deleting what a stage did not create."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import pipeline.artifacts.atomic as atomic
from pipeline.artifacts.checkpoint import load_checkpoint, save_checkpoint
from pipeline.artifacts.finite import NonFiniteError, check_finite
from pipeline.artifacts.metrics import MetricsLogger, read_metrics
from pipeline.artifacts.resume import RunLock
from pipeline.artifacts.store import ArtifactWriter, read_manifest, require_artifact, start_artifact
from pipeline.errors import UserError
from tests.conftest import ROOT


def start(final, kl=0.1, resume=True, fingerprint="a"):
    return start_artifact(final, "ppo", resume=resume, key={
        "config": {"ppo": {"kl_coef": kl, "lr": 1e-5}}, "inputs": {"policy": {"fingerprint": fingerprint}}})


def checkpoint(writer):
    (writer.checkpoint_dir / "ckpt").mkdir(exist_ok=True)
    (writer.checkpoint_dir / "ckpt" / "trainer.pt").write_text("state")


# ------------------------------------------------------------------ the key


def test_the_same_key_resumes_the_unfinished_work(tmp_path):
    checkpoint(start(tmp_path / "ppo"))
    assert (start(tmp_path / "ppo").checkpoint_dir / "ckpt" / "trainer.pt").is_file()


def test_a_changed_key_refuses_in_one_line_naming_the_key_and_both_ways_out(tmp_path):
    checkpoint(start(tmp_path / "ppo"))
    with pytest.raises(UserError) as e:
        start(tmp_path / "ppo", kl=0.05, fingerprint="b")
    msg = str(e.value)
    assert "ppo.kl_coef: 0.1 -> 0.05" in msg and "inputs.policy.fingerprint: a -> b" in msg
    assert "ppo.resume=false" in msg and "revert" in msg and "\n" not in msg
    assert "ppo.lr" not in msg  # only what changed
    assert (tmp_path / "ppo.partial" / "checkpoints" / "ckpt" / "trainer.pt").is_file()  # nothing discarded


def test_resume_false_is_the_way_out_and_starts_fresh_under_the_new_key(tmp_path):
    checkpoint(start(tmp_path / "ppo"))
    fresh = start(tmp_path / "ppo", kl=0.05, resume=False)
    assert not (fresh.checkpoint_dir / "ckpt").exists()
    checkpoint(fresh)
    assert (start(tmp_path / "ppo", kl=0.05).checkpoint_dir / "ckpt").is_dir()


def test_a_changed_key_with_nothing_checkpointed_just_starts_over(tmp_path):
    start(tmp_path / "ppo")  # killed before its first checkpoint
    start(tmp_path / "ppo", kl=0.05)  # nothing to mix up: no refusal


# ------------------------------------------------------------------ crash-safe swaps


def test_a_kill_between_the_two_renames_of_a_ppo_checkpoint_swap_recovers_the_old_copy(tmp_path, monkeypatch):
    from stages.ppo import checkpointing

    model = torch.nn.Linear(2, 2)
    save = dict(rank=0, is_main=True, barrier=lambda: None, models={"model": model})
    checkpointing.save(tmp_path, trainer_state={"step": 1}, **save)
    real_replace = os.replace

    def killed_before_second_rename(src, dst):
        if str(src).endswith("ckpt.tmp"):
            raise KeyboardInterrupt  # the process dies here: ckpt is already renamed to ckpt.old
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed_before_second_rename)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.save(tmp_path, trainer_state={"step": 2}, **save)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not (tmp_path / "ckpt").exists() and (tmp_path / "ckpt.old").is_dir()
    assert checkpointing.exists(tmp_path)  # puts the old copy back
    assert checkpointing.load(tmp_path, rank=0, world=1, models={"model": model})["step"] == 1


def test_a_ppo_checkpoint_resumes_only_on_as_many_processes_as_wrote_it(tmp_path):
    """Each process's episodes come from its own saved RNG: on another count the run would not be the one that
    stopped, so it is one line naming the checkpoint, both counts and what to do; on the same count it loads."""
    from pipeline.errors import UserError
    from stages.ppo import checkpointing

    model = torch.nn.Linear(2, 2)
    checkpointing.save(tmp_path, rank=0, is_main=True, barrier=lambda: None, models={"model": model},
                       trainer_state={"step": 3})
    shutil.copy(tmp_path / "ckpt" / "rng_0.pt", tmp_path / "ckpt" / "rng_1.pt")  # as the second process writes it
    with pytest.raises(UserError) as refused:
        checkpointing.load(tmp_path, rank=0, world=1, models={"model": model})
    assert "written by 2 processes and this launch has 1" in str(refused.value)
    assert "ppo.resume=false" in str(refused.value)
    assert checkpointing.load(tmp_path, rank=1, world=2, models={"model": model})["step"] == 3


def test_a_kill_between_the_two_renames_of_a_commit_leaves_the_previous_artifact_usable(tmp_path, monkeypatch):
    final = tmp_path / "sft"
    writer = ArtifactWriter(final, "sft")
    (writer.out_dir / "model.bin").write_text("old")
    writer.commit(config={}, metrics={"loss": 1.0})
    writer = ArtifactWriter(final, "sft")
    (writer.out_dir / "model.bin").write_text("new")
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda s, d: (_ for _ in ()).throw(KeyboardInterrupt)
                        if str(s).endswith("artifact") else real_replace(s, d))
    with pytest.raises(KeyboardInterrupt):
        writer.commit(config={}, metrics={"loss": 0.5})
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not final.exists()
    assert require_artifact(final, "make sft")["metrics"] == {"loss": 1.0}  # restored from sft.old
    assert (final / "model.bin").read_text() == "old"


def test_a_truncated_checkpoint_is_one_line_naming_the_file_and_what_to_do(tmp_path):
    model = torch.nn.Linear(4, 4)
    path = save_checkpoint(tmp_path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), step=3,
                           tokens_seen=9)
    assert load_checkpoint(tmp_path)["step"] == 3
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path, "train.resume")
    msg = str(e.value)
    assert str(path) in msg and "delete it" in msg and "train.resume=false" in msg
    assert "weights_only" not in msg and "\n" not in msg


def test_a_trainer_checkpoint_cut_short_is_skipped_and_a_truncated_one_is_named(tmp_path):
    from pipeline.lm.hf_glue import COMPLETE, resume_checkpoint

    for step in (5, 10):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "optimizer.pt").write_bytes(b"x" * 100)
        (d / COMPLETE).write_text(json.dumps({"optimizer.pt": 100}))
    (tmp_path / "checkpoint-15").mkdir()  # killed while saving: never marked complete
    assert resume_checkpoint(tmp_path, "sft.resume").endswith("checkpoint-10")
    assert not (tmp_path / "checkpoint-15").exists()  # the Trainer will write it afresh
    (tmp_path / "checkpoint-10" / "optimizer.pt").write_bytes(b"x" * 40)
    with pytest.raises(UserError, match=r"checkpoint-10/optimizer.pt is truncated: 40 of 100 bytes.*sft.resume=false"):
        resume_checkpoint(tmp_path, "sft.resume")


# ------------------------------------------------------------------ metrics


def test_metrics_are_appended_after_resume_and_later_rows_dropped(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log(step, loss=1.0 / step)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # cut by a kill
    resumed = MetricsLogger(tmp_path, resume_step=3, tensorboard=False)  # the checkpoint was at step 3
    resumed.log(4, loss=0.2)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # history kept, no duplicates, no cut line
    assert rows[0]["loss"] == 1.0


# ------------------------------------------------------------------ finite or nothing


def test_a_non_finite_final_metric_commits_nothing(tmp_path):
    writer = ArtifactWriter(tmp_path / "reward", "reward")
    (writer.out_dir / "model.bin").write_text("w")
    with pytest.raises(NonFiniteError, match="heldout_accuracy=nan"):
        writer.commit(config={}, metrics={"heldout_accuracy": math.nan, "steps": 3})
    assert not (tmp_path / "reward").exists()


def test_a_non_finite_loss_stops_with_the_step_and_the_last_good_checkpoint():
    with pytest.raises(NonFiniteError) as e:
        check_finite("pretrain", {"train_loss": math.inf}, step=12, last_good="x/latest.pt (step 10)")
    assert "step 12" in str(e.value) and "x/latest.pt (step 10)" in str(e.value) and "nothing was committed" in str(e.value)


def test_downstream_stages_refuse_an_artifact_with_non_finite_metrics(tmp_path):
    d = tmp_path / "reward"
    d.mkdir()
    (d / "manifest.json").write_text('{"stage": "reward", "status": "complete", "metrics": {"loss": NaN}}')
    with pytest.raises(NonFiniteError, match=r"loss=nan.*make reward"):
        require_artifact(d, "make reward")


# ------------------------------------------------------------------ one run per directory


def test_a_second_run_refuses_naming_the_pid_of_the_first(tmp_path):
    lock = tmp_path / "ppo.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.artifacts.resume import RunLock; "
                               f"RunLock({str(lock)!r}, 'ppo').acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"already running \\(PID {holder.pid}"):
            RunLock(lock, "ppo").acquire()
    finally:
        holder.kill()
        holder.wait()
    messages = []
    RunLock(lock, "ppo").acquire(log=messages.append).release()  # killed: the lock is stale now
    assert messages and f"took over the stale lock {lock} of PID {holder.pid}" in messages[0]
    assert not lock.exists()  # released: the next run starts without a word


# ------------------------------------------------------------------ never delete what is not ours


def test_a_stage_never_replaces_a_folder_that_is_not_its_artifact(tmp_path):
    theirs = tmp_path / "pretrain"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a pretrain artifact.*refusing to replace it"):
        ArtifactWriter(theirs, "pretrain")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "manifest.json").write_text('{"stage": "reward", "status": "complete"}')
    with pytest.raises(UserError, match="not a sft artifact"):
        start_artifact(tmp_path / "sft", "sft", resume=True)
    assert (theirs / "thesis.tex").read_text() == "years of work" and not (tmp_path / "pretrain.partial").exists()


def test_the_demo_builder_refuses_an_existing_folder_of_other_files(tmp_path):
    from data.demo import main

    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        main(["--config", "configs/test.yaml", f"data.dir={folder}"])
    assert e.value.code == 2 and (folder / "notes.txt").read_text() == "keep me"


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_work_folder(tmp_path):
    writer = start(tmp_path / "ppo")
    writer.remove_if_unused()  # what happens at exit
    assert not writer.work_dir.exists()
    writer = start(tmp_path / "ppo")
    checkpoint(writer)
    writer.remove_if_unused()
    assert writer.work_dir.exists()  # resumable work is kept


# ------------------------------------------------------------------ disk full


def test_a_full_disk_is_one_line_and_leaves_no_tmp_file(tmp_path):
    script = ("import resource, torch; from pipeline.artifacts.atomic import save_torch\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
              f"save_torch(torch.zeros(1 << 16), {str(tmp_path / 'latest.pt')!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "DiskFullError" in proc.stderr and "disk is full or a file-size limit was hit" in proc.stderr
    assert str(tmp_path / "latest.pt") in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no truncated latest.pt.tmp


def test_manifests_never_hold_nan(tmp_path):
    writer = ArtifactWriter(tmp_path / "eval", "eval")
    writer.commit(config={"x": 1}, metrics={"gold": None, "loss": 0.5})
    assert read_manifest(tmp_path / "eval")["metrics"] == {"gold": None, "loss": 0.5}


def test_a_resumed_run_that_fails_names_the_way_to_start_fresh(tmp_path, capsys):
    """A failure after a resume may repeat on every resume: the error comes with `<stage>.resume=false`."""
    from pipeline.errors import main_guard

    checkpoint(start(tmp_path / "ppo"))

    @main_guard
    def stage():
        start(tmp_path / "ppo")  # resumes the checkpoint above
        raise UserError("the report failed")

    with pytest.raises(SystemExit):
        stage()
    err = capsys.readouterr().err
    assert "error: the report failed" in err and "start fresh with ppo.resume=false" in err

    @main_guard
    def fresh():
        start(tmp_path / "other")  # nothing to resume: no such note
        raise UserError("bad input")

    with pytest.raises(SystemExit):
        fresh()
    assert "resume=false" not in capsys.readouterr().err


def test_what_the_operating_system_refuses_is_one_line_naming_the_path_and_a_bug_stays_a_traceback():
    import errno

    from pipeline.errors import os_error_line

    denied = PermissionError(errno.EACCES, "Permission denied", "/srv/runs/tiny")
    assert "cannot use /srv/runs/tiny: permission denied" in os_error_line(denied)
    assert "read-only" in os_error_line(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"))
    assert "out of memory" in os_error_line(MemoryError("can't allocate 40 GB"))
    assert "disk is full" in os_error_line(OSError(errno.ENOSPC, "No space left on device", "/x/model.safetensors"))
    assert os_error_line(ValueError("a bug")) is None and os_error_line(KeyError("k")) is None
