"""Resumable training state: one file, written atomically, read with `weights_only=True`.

The data order and the learning rate are functions of the step, so model + optimizer + step +
RNG states are all it takes for a resumed run to continue exactly as if never stopped.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

LATEST = "latest.pt"


def save_checkpoint(directory: str | Path, *, model, optimizer, step: int, tokens_seen: int, key: str) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "tokens_seen": tokens_seen,
        "key": key,  # which config/data/tokenizer this state belongs to
        "data_position": {"step": step},  # batches are drawn from a generator seeded by (seed, step)
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    tmp = directory / (LATEST + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, directory / LATEST)
    return directory / LATEST


def load_checkpoint(directory: str | Path, key: str) -> dict | None:
    """The saved state if there is one for this same key; None otherwise (a fresh start)."""
    path = Path(directory) / LATEST
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("key") != key:
        print(f"checkpoint {path} belongs to a different config/data/tokenizer; starting from scratch.")
        return None
    return state


def restore_rng(state: dict) -> None:
    rng = state["rng"]
    random.setstate(_as_tuple(rng["python"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
