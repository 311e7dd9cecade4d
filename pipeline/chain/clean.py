"""`make clean` (`python -m pipeline.chain.clean --config PRESET`): delete this run's artifacts and nothing else.

What goes: every artifact folder the stage graph declares (pipeline/chain/table.py; each round's too: ppo-r2, ...),
their unfinished work (`<stage>.partial`), the copy a kill can leave mid-commit (`<stage>.old`), their
locks, and the token cache. Each is recognised as ours before it goes: an artifact by its manifest's stage,
a work folder by its key.json or checkpoints. What stays: the labels people wrote (`labels/`, `labels-rN/`:
hours of work), the feedback they gave in `make serve` and `make chat` (`feedback/`, data/feedback.py), and
any file or folder the pipeline did not create. The run folder itself goes only when
nothing is left in it. Paths come from the config (run.out_dir, run.name: one folder name, checked when
the config is read), never from a string the shell builds, so spaces and odd names are safe.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

from pipeline.artifacts.store import read_manifest
from pipeline.chain.table import STAGES
from pipeline.config.loader import load_config
from pipeline.errors import main_guard

KEPT = re.compile(r"labels(-r[0-9]+)?|feedback")  # people's rankings and feedback: never deleted by any make target
OURS = {"cache"}  # folders the stages write besides the artifacts (pretraining's tokenizer and token cache)


def artifact_names(run_dir: Path) -> dict[str, str]:
    """{folder name: its stage} for every artifact this run may hold, rounds included."""
    names = {}
    for stage in STAGES:
        names[stage] = stage
        if STAGES[stage].loop:
            for d in run_dir.glob(f"{stage}-r*"):
                base = d.name.split(".")[0]
                if re.fullmatch(rf"{re.escape(stage)}-r[0-9]+", base):
                    names[base] = stage
    return names


def is_ours(path: Path, stage: str) -> bool:
    """Whether the pipeline made `path`: an artifact of `stage`, its work folder, its lock, or its old copy."""
    if path.name.endswith(".lock"):
        return path.is_file()
    if path.name.endswith(".partial"):
        return path.is_dir() and ((path / "key.json").is_file() or (path / "checkpoints").is_dir()
                                  or (path / "artifact").is_dir())
    manifest = read_manifest(path) if path.is_dir() else None
    return bool(manifest) and manifest.get("stage") == stage


def clean(run_dir: Path, log=print) -> tuple[list[Path], list[Path]]:
    """(deleted, kept) under `run_dir`."""
    deleted, kept = [], []
    if not run_dir.is_dir():
        log(f"clean: {run_dir} does not exist; nothing to delete")
        return deleted, kept
    names = artifact_names(run_dir)
    for path in sorted(run_dir.iterdir()):
        base, _, suffix = path.name.partition(".")
        stage = names.get(base)
        if stage and suffix in ("", "partial", "old", "lock") and is_ours(path, stage):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            deleted.append(path)
        elif path.name in OURS and path.is_dir():
            shutil.rmtree(path)
            deleted.append(path)
        else:
            kept.append(path)
    if not kept:
        run_dir.rmdir()
    return deleted, kept


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.chain.clean", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("CONFIG", "configs/tiny.yaml"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    deleted, kept = clean(cfg.run_dir)
    for p in deleted:
        print(f"clean: deleted {p}")
    for p in kept:
        print(f"clean: kept {p} ({'what people ranked' if KEPT.fullmatch(p.name) else 'not made by the pipeline'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
