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
    """The device of run.device; one that this machine does not have is refused (a run on the CPU that
    records `device: cuda` would say it ran where it did not)."""
    from pipeline.errors import UserError

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device=cuda, but torch sees no CUDA GPU here (a CPU build of torch, or no driver): "
                        "set run.device=auto or cpu, or install a CUDA build of torch.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("run.device=mps, but this machine has no Apple GPU (MPS): set run.device=auto or cpu.")
    if name != "auto":
        device = torch.device(name)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    refuse_sharding_without_gpus(device.type)
    return device


def refuse_sharding_without_gpus(device_type: str) -> None:
    """A launch that asks for a sharded backend this machine cannot run is refused, instead of training plain
    data-parallel while its config says sharded: DeepSpeed runs only on CUDA GPUs; FSDP runs on CPU processes
    for the stages that shard there (pipeline.runtime.sharding: pretrain, sft, ppo), on no other device."""
    if device_type == "cuda":
        return
    from pipeline.errors import UserError
    from pipeline.runtime.sharding import SHARDING_STAGES, asks_for_fsdp, this_stage_shards_on_cpu

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise UserError(f"this launch asks for DeepSpeed (configs/accelerate/deepspeed_zero*.yaml), which runs only "
                        f"on CUDA GPUs; here ({device_type}) it would train unsharded: launch with "
                        "configs/accelerate/cpu_ddp.yaml (make <stage> NPROC=N) or cpu_fsdp.yaml (SHARD=fsdp) instead.")
    if asks_for_fsdp() and not (device_type == "cpu" and this_stage_shards_on_cpu()):
        where = ("on CPU processes only for " + SHARDING_STAGES) if device_type == "cpu" else "on CUDA GPUs and CPUs"
        raise UserError(f"this launch asks for FSDP, which runs here {where}; this stage on {device_type} would "
                        "train unsharded: launch it with configs/accelerate/cpu_ddp.yaml (make <stage> NPROC=N) "
                        "instead.")


def mixed_precision(run_dtype: str, device_type: str) -> str:
    """accelerate's mixed_precision for a run: bf16 on capable GPUs, none on the CPU."""
    if run_dtype == "bfloat16" or (run_dtype == "auto" and device_type == "cuda" and torch.cuda.is_bf16_supported()):
        return "bf16"
    if run_dtype == "float16":
        return "fp16"
    return "no"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def reuse_freed_cpu_memory(block_bytes: int = 32 << 20, keep_bytes: int = 256 << 20) -> bool:
    """Let glibc serve CPU tensors up to `block_bytes` from memory the process already has.

    By default glibc gives each large block (a batch of logits, a layer's activations) fresh pages
    from the OS and returns them on free, so every training step pays the kernel to zero the same
    megabytes again: on the tiny PPO benchmark that is ~500k page faults and ~5% of the time.
    Keeping up to `keep_bytes` freed at the top of the heap, as jemalloc/tcmalloc would, removes
    most of it. Linux/glibc only; returns whether it took effect (elsewhere it changes nothing)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, block_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, keep_bytes))
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False


def share_cpu_threads(device_type: str, processes_here: int | None = None) -> None:
    """On the CPU, give each process on this machine an equal share of its cores (unless
    OMP_NUM_THREADS says otherwise): oversubscribed cores cost more than they give."""
    if device_type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    local = processes_here or int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(max(1, usable_cores() // local))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS keeps one (Linux; a container
    or `taskset` may allow fewer than the machine has), else every core (macOS and Windows have no
    os.sched_getaffinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def accelerate_state():
    """accelerate's state of this launch (the one Accelerator, Trainer and `accelerate launch` share; the
    first call in a process decides it). On a machine without CUDA the launched processes are CPU processes
    over gloo: accelerate's PartialState() without cpu=True would make each of them a lone process, and
    every rank would then take the run's lock and write the artifact."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """The one test for "this process writes the artifact": accelerate's view of the launch, true when
    nothing was launched."""
    return accelerate_state().is_main_process


def launch_facts() -> dict:
    """How this run was launched, for its manifest: processes, machines, the collective backend and
    accelerate's distributed type and mixed precision. Read from accelerate's state when the stage made
    one (every launched stage does), else from the launcher's environment; a plain `python -m` run
    records 1 process, 1 machine, backend "none". Never starts a process group itself."""
    import sys

    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    facts = {"num_processes": world, "num_machines": max(1, world // max(1, local)), "backend": "none",
             "distributed_type": "NO", "mixed_precision": "no"}
    if "accelerate" not in sys.modules:  # a stage that never imported it (data, rank...) ran as one plain process
        return facts
    from accelerate.state import AcceleratorState, PartialState

    if PartialState._shared_state:  # initialised by this stage (Accelerator, Trainer, is_main_process)
        state = PartialState()
        facts.update(num_processes=state.num_processes, backend=state.backend or "none",
                     distributed_type=getattr(state.distributed_type, "value", str(state.distributed_type)))
        if state.num_processes == 1:
            facts["backend"] = "none"  # accelerate names a backend even when there is no process group
    if AcceleratorState._shared_state:
        facts["mixed_precision"] = str(AcceleratorState().mixed_precision)
    return facts
