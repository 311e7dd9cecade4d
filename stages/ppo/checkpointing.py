"""Resumable PPO state: both trained networks, the optimizer and LR schedule, the KL controller,
the prompt sampler, the step, and every rank's RNG, so a resumed run continues the same stream
of samples as one that was never killed.

A checkpoint is written to `<dir>/ckpt.tmp`, fsynced and swapped in for `<dir>/ckpt` only when
complete (pipeline.artifacts.atomic.swap_dir); a kill at any point leaves a whole checkpoint, the old or the
new one (`exists`/`load` first put the old copy back after a kill between the two renames).
Loading uses weights_only=True, and a corrupt file is one line naming it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.artifacts.atomic import recover_dir, save_torch, swap_dir, translating_disk_errors
from pipeline.artifacts.checkpoint import load_state_file, rng_state, set_rng_state
from pipeline.errors import UserError

NAME = "ckpt"


def save(directory: Path, *, rank: int, is_main: bool, barrier, models: dict, trainer_state: dict) -> None:
    """Every rank writes its RNG state; the main process writes everything else."""
    directory = Path(directory)
    tmp, final = directory / (NAME + ".tmp"), directory / NAME
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        save_torch(rng_state(), tmp / f"rng_{rank}.pt")
        if is_main:
            save_torch({k: v.state_dict() for k, v in models.items()}, tmp / "state.pt")
            save_torch(trainer_state, tmp / "trainer.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written checkpoint left behind (a full disk)
        raise
    barrier()
    if is_main:
        with translating_disk_errors(final):
            swap_dir(tmp, final)
    barrier()


def exists(directory: Path | None) -> bool:
    if directory is None:
        return False
    recover_dir(Path(directory) / NAME)  # a kill between the swap's two renames left only ckpt.old
    return (Path(directory) / NAME / "trainer.pt").is_file()


def load(directory: Path, *, rank: int, world: int, models: dict, resume_flag: str = "ppo.resume") -> dict:
    """Restore models/optimizer/scheduler in place and this rank's RNG; returns the trainer state. A checkpoint
    written by another number of processes is refused: each process samples its episodes from its own saved RNG,
    so the resumed run would not continue the one that stopped."""
    d = Path(directory) / NAME
    wrote = len(list(d.glob("rng_*.pt")))
    if wrote != world:
        raise UserError(f"{d} was written by {wrote} process{'es' * (wrote != 1)} and this launch has {world}: PPO "
                        f"resumes only on as many processes as it started on (each process's sampling continues "
                        f"from its own saved state), so launch it on {wrote}, or re-run with {resume_flag}=false "
                        "to start fresh.")
    states = load_state_file(d / "state.pt", resume_flag)
    trainer_state = load_state_file(d / "trainer.pt", resume_flag)
    for k, obj in models.items():
        obj.load_state_dict(states[k])
    set_rng_state(load_state_file(d / f"rng_{rank}.pt", resume_flag))
    return trainer_state
