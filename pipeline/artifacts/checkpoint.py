"""Resumable training state: one file, written atomically (fsync + rename), read with `weights_only=True`.

The data order and the learning rate are functions of the step, so model + optimizer + step +
RNG states are all it takes for a resumed run to continue exactly as if never stopped. Which
config the state belongs to is the work directory's key (pipeline.artifacts.resume), checked before this.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from pipeline.artifacts.atomic import save_torch
from pipeline.errors import UserError

LATEST = "latest.pt"


def save_checkpoint(directory: str | Path, *, model, optimizer, step: int, tokens_seen: int, **extra) -> Path:
    """`extra`: more loop state (tensors and plain values), returned as is by load_checkpoint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "tokens_seen": tokens_seen,
        "data_position": {"step": step},  # batches are drawn from a generator seeded by (seed, step)
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        **extra,
        "rng": rng_state(),
    }
    return save_torch(state, directory / LATEST)


def load_checkpoint(directory: str | Path, resume_flag: str = "resume") -> dict | None:
    """The saved state, or None when there is none (a fresh start)."""
    path = Path(directory) / LATEST
    if not path.is_file():
        return None
    return load_state_file(path, resume_flag)


def load_state_file(path: str | Path, resume_flag: str):
    """torch.load(weights_only=True) of our own checkpoint file; a truncated or corrupt one is one line
    saying what to do (the library's own message would advise loading unsafely)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip reader, unpickler and tensor-storage errors all mean the same here
        raise UserError(f"{path} is corrupt or truncated ({type(e).__name__}), so the run cannot resume from it: "
                        f"delete it to fall back to an earlier checkpoint (or a fresh start), or re-run with "
                        f"{resume_flag}=false to start fresh.") from None


def rng_state() -> dict:
    """Every random stream a run draws from (Python, torch, CUDA): saved with each checkpoint."""
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(rng: dict) -> None:
    """Put back what rng_state saved, so a resumed run draws the same numbers as an unbroken one."""
    random.setstate(_as_tuple(rng["python"]))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def restore_rng(state: dict) -> None:
    set_rng_state(state["rng"])


def _as_tuple(x):  # a state read back through JSON-like paths has lists where random wants tuples
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
