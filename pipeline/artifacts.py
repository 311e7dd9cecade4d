"""On-disk artifacts that chain the stages.

A stage works in `runs/<name>/<stage>.partial/` (checkpoints, logs, the artifact being built)
and only on success renames the finished artifact to `runs/<name>/<stage>/`, with a
`manifest.json` saying what produced it. So a crashed or killed stage never leaves a directory
that the next stage could mistake for finished, and re-running it resumes from its checkpoints.
"""

from __future__ import annotations

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

from pipeline.errors import UserError

MANIFEST = "manifest.json"
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
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


def is_complete(path: str | Path) -> bool:
    m = read_manifest(path)
    return bool(m) and m.get("status") == "complete"


def require_artifact(path: str | Path, make_target: str) -> dict:
    """The manifest of a finished artifact, or a UserError naming the make target that builds it."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if not path.exists():
        hint = f" An unfinished run is in {partial}; re-run it to resume." if partial.exists() else ""
        raise UserError(f"{path} does not exist: run `{make_target}` first to produce it.{hint}")
    if not is_complete(path):
        raise UserError(
            f"{path} is not a finished artifact (no complete {MANIFEST}); run `{make_target}` to rebuild it."
        )
    return read_manifest(path)


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

    def __init__(self, final_dir: str | Path, stage: str):
        self.final_dir = Path(final_dir)
        self.stage = stage
        self.work_dir = self.final_dir.with_name(self.final_dir.name + ".partial")
        self.out_dir = self.work_dir / "artifact"
        self.checkpoint_dir = self.work_dir / "checkpoints"
        self.started = time.time()
        for d in (self.out_dir, self.checkpoint_dir):
            d.mkdir(parents=True, exist_ok=True)

    def discard(self) -> None:
        """Forget the unfinished work (checkpoints included)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def commit(self, *, config: dict, inputs: dict | None = None, metrics: dict | None = None,
               extra: dict | None = None) -> Path:
        manifest = {
            "stage": self.stage,
            "status": "complete",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_time_s": round(time.time() - self.started, 1),
            "fingerprint": fingerprint(self.out_dir),
            "inputs": inputs or {},
            "metrics": metrics or {},
            "config": config,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "host": {"platform": platform.platform(), "argv": sys.argv},
            **(extra or {}),
        }
        tmp = self.out_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        os.replace(tmp, self.out_dir / MANIFEST)
        old = self.final_dir.with_name(self.final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.final_dir.exists():
            os.replace(self.final_dir, old)
        os.replace(self.out_dir, self.final_dir)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return self.final_dir


def up_to_date(final_dir: str | Path, config: dict, inputs: dict) -> bool:
    """True when `final_dir` is a finished artifact made from these inputs with this config.

    `config` holds the sections (or keys) the stage depends on: each must equal the same path in
    the manifest's resolved config, so a change elsewhere (another stage's section, run.name)
    does not make this stage stale. `inputs` must equal the manifest's inputs exactly.
    """
    manifest = read_manifest(final_dir)
    if not manifest or manifest.get("status") != "complete":
        return False
    as_json = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731 - tuples/paths as saved
    return _is_subset(as_json(config), manifest.get("config") or {}) and as_json(inputs) == manifest.get("inputs")


def already_done(final_dir: str | Path, config: dict, inputs: dict) -> bool:
    """`up_to_date`, said out loud: a stage calls this first and exits when it is True."""
    if not up_to_date(final_dir, config, inputs):
        return False
    print(f"{final_dir} is up to date (same config and inputs); nothing to do.")
    return True


def start_artifact(final_dir: str | Path, stage: str, *, resume: bool, is_main: bool = True) -> ArtifactWriter:
    """The writer of a stage's artifact; without `resume`, unfinished work (checkpoints) is discarded
    first, by the main process only."""
    writer = ArtifactWriter(final_dir, stage)
    if not resume and is_main:
        writer.discard()
        writer = ArtifactWriter(final_dir, stage)
    return writer


def _is_subset(wanted, have) -> bool:
    if isinstance(wanted, dict):
        return isinstance(have, dict) and all(k in have and _is_subset(v, have[k]) for k, v in wanted.items())
    return wanted == have
