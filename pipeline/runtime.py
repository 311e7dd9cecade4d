"""Process-level setup shared by stages: seeding, device choice, accelerate."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def mixed_precision(run_dtype: str, device_type: str) -> str:
    """accelerate's mixed_precision for a run: bf16 on capable GPUs, none on the CPU."""
    if run_dtype == "bfloat16" or (run_dtype == "auto" and device_type == "cuda" and torch.cuda.is_bf16_supported()):
        return "bf16"
    if run_dtype == "float16":
        return "fp16"
    return "no"
