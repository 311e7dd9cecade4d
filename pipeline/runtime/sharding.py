"""FSDP on CPU processes, and the full (unsharded) state of a sharded model.

accelerate (1.15) turns its FSDP plugin on only for GPU-like process groups: its AcceleratorState never reads
ACCELERATE_USE_FSDP for MULTI_CPU, so a CPU launch with an FSDP config would prepare plain DDP. torch's
fully_shard (FSDP2) itself runs on a CPU mesh over gloo. `shard_cpu_launch` sets the state as accelerate sets
it on GPUs (distributed_type FSDP, the plugin read from the launcher's FSDP_* variables), so that
`Accelerator.prepare(model, optimizer)` shards through accelerate's own FSDP2 code and the GPU and CPU paths
stay one path. The stages that do this (pretrain, sft; not yet ppo) say so with `stage_shards_on_cpu()`; any other
stage launched with FSDP on CPU processes is refused (pipeline.runtime.device.pick_device).

Under FSDP each process holds 1/N of every parameter (a DTensor shard). What leaves the process group (the
artifact, a checkpoint) is the full state, gathered on every process and kept by the main one.
"""

from __future__ import annotations

import os

_STAGE = {"shards_on_cpu": False}
SHARDING_STAGES = "pretrain and sft"


def asks_for_fsdp() -> bool:
    """Whether this process was launched with an FSDP config (accelerate launch sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def stage_shards_on_cpu() -> None:
    """Called by a stage that calls `shard_cpu_launch` on its Accelerator before preparing its model."""
    _STAGE["shards_on_cpu"] = True


def this_stage_shards_on_cpu() -> bool:
    return _STAGE["shards_on_cpu"]


def shard_cpu_launch(accelerator) -> bool:
    """Make a CPU launch that asks for FSDP shard its model as a GPU launch would; call before prepare().
    Returns whether this launch trains sharded. A one-process launch stays unsharded (nothing to shard over)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from pipeline.errors import UserError

    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:  # GPUs (or an accelerate that does it for CPUs itself)
        return True
    if state.distributed_type != DistributedType.MULTI_CPU or not asks_for_fsdp():
        return False
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables, as accelerate reads them
    if plugin.fsdp_version != 2:
        raise UserError(f"FSDP version {plugin.fsdp_version} on CPU processes: only FSDP2 (torch's fully_shard) is "
                        "tested here; set fsdp_version: 2 in the launcher config (configs/accelerate/cpu_fsdp.yaml).")
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # As AcceleratorState does on GPUs: an Accelerator made later in this process (the Trainer's) copies it.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def local_share(module) -> tuple[int, int]:
    """(parameters this process holds, parameters of the model): under FSDP about 1/N of them."""
    from torch.distributed.tensor import DTensor

    held = total = 0
    for p in module.parameters():
        total += p.numel()
        held += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return held, total


def describe_shards(accelerator, module, what: str) -> None:
    """One line per process under FSDP: how much of the model it holds (the tests read it)."""
    if not is_sharded(accelerator):
        return
    held, total = local_share(module)
    print(f"fsdp: process {accelerator.process_index} of {accelerator.num_processes} holds {held:,} of the "
          f"{total:,} parameters of the {what}", flush=True)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # full: every shard gathered; cpu_offload: kept on the main process only, in CPU memory
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(accelerator, module) -> dict:
    """`module`'s full state dict (keys as module.state_dict() names them). Every process must call it; under
    FSDP only the main process gets the tensors (the others an empty dict)."""
    if not is_sharded(accelerator):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options())


def full_optimizer_state(accelerator, module, optimizer) -> dict:
    """The optimizer's full state (under FSDP keyed by parameter names, as torch's distributed checkpoint
    writes it). Every process must call it."""
    if not is_sharded(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, getattr(optimizer, "optimizer", optimizer), options=_options())


def load_full_optimizer_state(accelerator, module, optimizer, state: dict) -> None:
    """Restore what `full_optimizer_state` returned; under FSDP after prepare(), each process taking its shard."""
    if not is_sharded(accelerator):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, getattr(optimizer, "optimizer", optimizer), state,
                             options=StateDictOptions(full_state_dict=True))
