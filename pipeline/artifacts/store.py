"""On-disk artifacts that chain the stages.

A stage works in `runs/<name>/<stage>.partial/` (checkpoints, logs, the artifact being built)
and only on success renames the finished artifact to `runs/<name>/<stage>/`, with a
`manifest.json` saying what produced it. So a crashed or killed stage never leaves a directory
that the next stage could mistake for finished, and re-running it resumes from its checkpoints
(`pipeline.artifacts.resume`: only with the same config key, one run at a time). A commit never replaces a
directory that is not an artifact of the same stage, and never commits non-finite metrics.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from pipeline.artifacts.atomic import fsync_dir, swap_dir, translating_disk_errors, write_text
from pipeline.artifacts.finite import NonFiniteError, non_finite
from pipeline.artifacts.resume import RunLock, check_resume_key
from pipeline.errors import UserError, note_resumed

MANIFEST = "manifest.json"
_CLOCK = "wall_time.json"  # in the work dir: the time earlier processes spent on it, for the manifest's wall_time_s
_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "safetensors")


def fingerprint(path: str | Path) -> str:
    """Content hash of a file or a directory tree (names and bytes), as 16 hex digits."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f.name == MANIFEST:
            continue
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def is_saved_dataset(p: Path) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists())


def source_fingerprint(source: str) -> str:
    """A content hash of a data source: a file, a folder or a glob; a hub dataset is recorded by
    name (`hub:<name>`). Stages put it in their manifest so a changed dataset makes them stale."""
    if not str(source).strip():  # Path("") is the current folder: never hash the repo and .venv (minutes) as data
        raise UserError("a data source is empty (a data key set to nothing, e.g. train.data=): name a file, "
                        "folder, glob or hub dataset.")
    if Path(source).exists():
        return fingerprint(source)
    folder, _, split = source.rpartition(":")
    if folder and is_saved_dataset(Path(folder)):
        return f"{fingerprint(folder)}:{split}"
    matches = sorted(glob.glob(source, recursive=True)) if glob.has_magic(source) else []
    if matches:
        h = hashlib.sha256()
        for m in matches:
            h.update(m.encode() + fingerprint(m).encode())
        return h.hexdigest()[:16]
    return f"hub:{source}"


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def read_manifest(path: str | Path) -> dict | None:
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:  # an old manifest's NaN reads back as a float, so require_artifact can name it
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_complete(path: str | Path) -> bool:
    m = read_manifest(path)
    return bool(m) and m.get("status") == "complete"


def require_artifact(path: str | Path, make_target: str) -> dict:
    """The manifest of a finished artifact, or a UserError naming the make target that builds it."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    _recover_commit(path)
    if not path.exists():
        hint = f" An unfinished run is in {partial}; re-run it to resume." if partial.exists() else ""
        raise UserError(f"{path} does not exist: run `{make_target}` first to produce it.{hint}")
    if not is_complete(path):
        raise UserError(
            f"{path} is not a finished artifact (no complete {MANIFEST}); run `{make_target}` to rebuild it."
        )
    manifest = read_manifest(path)
    bad = non_finite(manifest.get("metrics") or {})
    if bad:
        raise NonFiniteError(f"{path} records non-finite metrics ({', '.join(bad[:3])}): the run that made it "
                             f"diverged; rebuild it with `{make_target}` (after lowering its learning rate).")
    return manifest


def resolve_model_source(value: str | None, default_dir: Path, make_target: str) -> tuple[str, dict]:
    """Where to load a model from, and a record of it for the manifest.

    `value` may be None (this run's artifact), one of our artifacts, any Hugging Face model
    directory, or a hub name (kept as the real code path; needs network).
    """
    if value is None:
        manifest = require_artifact(default_dir, make_target)
        return str(default_dir), {"path": str(default_dir), "fingerprint": manifest.get("fingerprint")}
    p = Path(value)
    if p.exists():
        if (p / MANIFEST).exists():
            manifest = require_artifact(p, make_target)
            return str(p), {"path": str(p), "fingerprint": manifest.get("fingerprint")}
        if not (p / "config.json").is_file():
            raise UserError(
                f"{p} is not a model directory (no config.json). Point it at a stage artifact such as "
                "runs/<preset>/sft, any Hugging Face model directory, or a hub name."
            )
        return str(p), {"path": str(p), "fingerprint": fingerprint(p)}
    if value.startswith((".", "/", "runs")) or value.count("/") > 1:
        raise UserError(f"{value} does not exist. {make_target!r} builds this run's artifact.")
    return value, {"hub": value}


class ArtifactWriter:
    """Build an artifact in a scratch directory and commit it atomically.

        writer = ArtifactWriter(cfg.stage_dir("pretrain"), "pretrain")
        model.save_pretrained(writer.out_dir)            # the artifact's content
        torch.save(state, writer.checkpoint_dir / ...)   # resumable state, never committed
        writer.commit(config=..., inputs=..., metrics=...)
    """

    def __init__(self, final_dir: str | Path, stage: str, key: dict | None = None):
        self.final_dir = Path(final_dir)
        self.stage = stage
        self.key = key  # the declared key the up-to-date check compares (pipeline/chain/table.py)
        self.work_dir = self.final_dir.with_name(self.final_dir.name + ".partial")
        self.out_dir = self.work_dir / "artifact"
        self.checkpoint_dir = self.work_dir / "checkpoints"
        self.started = time.time()
        self.earlier_s = 0.0  # seconds that earlier processes spent on this work dir (start_clock)
        self.committed = False
        check_replaceable(self.final_dir, stage)
        for d in (self.out_dir, self.checkpoint_dir):
            d.mkdir(parents=True, exist_ok=True)

    def start_clock(self) -> None:
        """Count the time earlier processes spent on this work dir (a resumed run continues their work,
        so the manifest's wall_time_s is the total) and record this process's start for the next one.

        A killed process cannot say when it stopped: its end is taken as the last time it wrote a file
        here (a checkpoint, a line of metrics); the minutes between that and the kill are not counted.
        Called before anything else is written in this process, or its own writes would count as theirs."""
        clock = self.work_dir / _CLOCK
        try:
            before = json.loads(clock.read_text())
            last_write = max((p.stat().st_mtime for p in self.work_dir.rglob("*") if p.is_file() and p != clock),
                             default=float(before["started"]))
            self.earlier_s = float(before["earlier_s"]) + max(0.0, last_write - float(before["started"]))
        except (OSError, ValueError, KeyError, TypeError):  # a fresh work dir, or no readable clock: the first
            self.earlier_s = 0.0
        write_text(clock, json.dumps({"earlier_s": self.earlier_s, "started": self.started}) + "\n")

    def discard(self) -> None:
        """Forget the unfinished work (checkpoints included)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def has_checkpoint(self) -> bool:
        return self.checkpoint_dir.is_dir() and any(
            p.is_file() and not p.name.endswith(".tmp") for p in self.checkpoint_dir.rglob("*"))

    def remove_if_unused(self) -> None:
        """At exit: a run that failed before its first checkpoint leaves no empty work folder behind."""
        if not self.committed and self.work_dir.exists() and not self.has_checkpoint():
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def commit(self, *, config: dict, inputs: dict | None = None, metrics: dict | None = None,
               extra: dict | None = None) -> Path:
        from pipeline.runtime.device import launch_facts

        bad = non_finite(metrics or {})
        if bad:
            raise NonFiniteError(f"{self.stage}: final metrics are not finite ({', '.join(bad[:3])}): the run "
                                 f"diverged; nothing was committed (lower the learning rate?).")
        manifest = {
            "stage": self.stage,
            "status": "complete",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_time_s": round(self.earlier_s + time.time() - self.started, 1),  # resumed runs: all processes
            "fingerprint": fingerprint(self.out_dir),
            "inputs": inputs or {},
            **({"key": self.key} if self.key is not None else {}),
            "metrics": metrics or {},
            "config": config,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "host": {"platform": platform.platform(), "argv": sys.argv},
            "launch": launch_facts(),  # processes, machines, backend: how it ran (the same artifact whatever N)
            **(extra or {}),
        }
        check_replaceable(self.final_dir, self.stage)  # checked at start too; the folder may have appeared since
        with translating_disk_errors(self.out_dir):
            write_text(self.out_dir / MANIFEST, json.dumps(manifest, indent=2, default=str, allow_nan=False) + "\n")
            swap_dir(self.out_dir, self.final_dir)  # fsyncs the artifact; a kill anywhere leaves a whole one
        self.committed = True
        shutil.rmtree(self.work_dir, ignore_errors=True)
        fsync_dir(self.final_dir.parent)
        return self.final_dir


def check_replaceable(final_dir: Path, stage: str) -> None:
    """A stage replaces only its own artifacts: refuse a non-empty folder without its manifest."""
    old = final_dir.with_name(final_dir.name + ".old")
    for path in (final_dir, old):
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            continue
        manifest = read_manifest(path) if path.is_dir() else None
        if not manifest or manifest.get("stage") != stage:
            raise UserError(f"{path} exists and is not a {stage} artifact (no {MANIFEST} of stage {stage!r}); "
                            "refusing to replace it: move it away or point the run at another directory.")


def _recover_commit(final_dir: Path) -> None:
    """A kill between the two renames of a commit leaves only `<final>.old`: put it back."""
    old = final_dir.with_name(final_dir.name + ".old")
    if old.is_dir() and not final_dir.exists() and read_manifest(old):
        try:
            os.replace(old, final_dir)
        except FileNotFoundError:
            pass  # another process (a DDP rank) restored it first


def start_artifact(final_dir: str | Path, stage: str, *, resume: bool, key: dict | None = None,
                   resume_flag: str | None = None) -> ArtifactWriter:
    """The writer of a stage's artifact, after the main process has
      - locked the stage in this run directory (`<stage>.lock`; a second run refuses at once),
      - discarded unfinished work if not `resume`,
      - checked the work dir's key ({"config", "inputs"}: the stage's declared key, pipeline/chain/table.py);
        a work dir started with another is refused, naming the changed keys and `resume_flag`
        (default `<stage>.resume`) as the way to start fresh.
    The writer records the key in the manifest at commit: the up-to-date check compares it.
    A run that fails before its first checkpoint removes its work dir at exit."""
    from pipeline.runtime.device import is_main_process

    final_dir = Path(final_dir)
    if not is_main_process():
        return ArtifactWriter(final_dir, stage, key=key)  # the main process went first (callers wait for it)
    check_replaceable(final_dir, stage)  # before touching anything
    _recover_commit(final_dir)
    RunLock(final_dir.with_name(final_dir.name + ".lock"), f"{stage} in {final_dir.parent}").acquire()
    writer = ArtifactWriter(final_dir, stage, key=key)
    if not resume:
        writer.discard()
        writer = ArtifactWriter(final_dir, stage, key=key)
    writer.start_clock()  # before the resume key is written: that is this process's work
    if key is not None:
        check_resume_key(writer.work_dir, stage, key=key, resume_flag=resume_flag or f"{stage}.resume",
                         has_work=writer.has_checkpoint())
    if writer.has_checkpoint():
        note_resumed(writer.work_dir, resume_flag or f"{stage}.resume")
    atexit.register(writer.remove_if_unused)
    return writer
