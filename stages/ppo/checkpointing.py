"""Resumable PPO state: both trained networks, the optimizer and LR schedule, the KL controller,
the prompt sampler, the step, and every rank's RNG, so a resumed run continues the same stream
of samples as one that was never killed.

A checkpoint is written to `<dir>/ckpt.tmp` and renamed to `<dir>/ckpt` only when complete; a kill
in the middle of a save leaves the previous checkpoint intact. Loading uses weights_only=True.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

NAME = "ckpt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(directory: Path, *, rank: int, is_main: bool, barrier, models: dict, trainer_state: dict) -> None:
    """Every rank writes its RNG state; the main process writes everything else."""
    directory = Path(directory)
    tmp, final = directory / (NAME + ".tmp"), directory / NAME
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng_{rank}.pt")
    if is_main:
        torch.save({k: v.state_dict() for k, v in models.items()}, tmp / "state.pt")
        torch.save(trainer_state, tmp / "trainer.pt")
    barrier()
    if is_main:
        old = directory / (NAME + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def exists(directory: Path | None) -> bool:
    return directory is not None and (Path(directory) / NAME / "trainer.pt").is_file()


def load(directory: Path, *, rank: int, models: dict) -> dict:
    """Restore models/optimizer/scheduler in place and this rank's RNG; returns the trainer state."""
    d = Path(directory) / NAME
    states = torch.load(d / "state.pt", map_location="cpu", weights_only=True)
    for k, obj in models.items():
        obj.load_state_dict(states[k])
    rng_file = d / f"rng_{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return torch.load(d / "trainer.pt", map_location="cpu", weights_only=True)
