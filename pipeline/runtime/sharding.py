"""FSDP on CPU processes, and the full (unsharded) state of a sharded model.

accelerate (1.15) turns its FSDP plugin on only for GPU-like process groups: its AcceleratorState never reads
ACCELERATE_USE_FSDP for MULTI_CPU, so a CPU launch with an FSDP config would prepare plain DDP. torch's
fully_shard (FSDP2) itself runs on a CPU mesh over gloo. `shard_cpu_launch` sets the state as accelerate sets
it on GPUs (distributed_type FSDP, the plugin read from the launcher's FSDP_* variables), so that
`Accelerator.prepare(model, optimizer)` shards through accelerate's own FSDP2 code and the GPU and CPU paths
stay one path. The stages that do this (pretrain, sft, ppo) say so with `stage_shards_on_cpu()`; any other
stage launched with FSDP on CPU processes is refused (pipeline.runtime.device.pick_device).

Under FSDP each process holds 1/N of every parameter (a DTensor shard). What leaves the process group (the
artifact, a checkpoint) is the full state, gathered on every process and kept by the main one.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

_STAGE = {"shards_on_cpu": False}
SHARDING_STAGES = "pretrain, sft and ppo"


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
    sys.stdout.write(f"fsdp: process {accelerator.process_index} of {accelerator.num_processes} holds {held:,} of "
                     f"the {total:,} parameters of the {what}\n")  # one write: the processes share the terminal
    sys.stdout.flush()


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


def gather_whole(accelerator, root):
    """Gather every FSDP unit of `root` into whole weights on this process and keep them whole (no reshard after a
    forward), so that forwards need no other process: generation stopping at other lengths on each process, or
    sampling on the main process alone. A collective: every process calls it. Returns the function that shards the
    weights again (None when nothing is sharded); until it is called, training would not shard anything."""
    if not is_sharded(accelerator):
        return None
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in root.modules() if isinstance(m, FSDPModule)]
    # FSDP2 sets up its root at the root's first forward; a forward of a submodule first (generation calls the
    # policy, not the root) would take that submodule for the root. Private in torch 2.13, hence the guard.
    state = root._get_fsdp_state() if isinstance(root, FSDPModule) else None
    if state is not None and hasattr(state, "_lazy_init"):
        state._lazy_init()
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()

    def shard_again() -> None:
        for unit in units:
            unit.reshard()
            if unit is not root:  # the root keeps its weights after forward, as fully_shard decides for a root
                unit.set_reshard_after_forward(True, recurse=False)

    return shard_again


@contextmanager
def whole_weights(accelerator, root):
    """`gather_whole` for the length of a `with` block."""
    shard_again = gather_whole(accelerator, root)
    try:
        yield
    finally:
        if shard_again is not None:
            shard_again()


class WholeState:
    """A sharded model's or optimizer's full state for code that saves with state_dict() on the main process and
    loads with load_state_dict() on every process: gathered when made with gather=True (a collective: every
    process makes it), and on loading each process keeps its own shard of the full state it read."""

    def __init__(self, accelerator, module, optimizer=None, *, gather: bool):
        self.accelerator, self.module, self.optimizer = accelerator, module, optimizer
        self.state = None
        if gather:
            self.state = (full_model_state(accelerator, module) if optimizer is None
                          else full_optimizer_state(accelerator, module, optimizer))

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is not None:
            load_full_optimizer_state(self.accelerator, self.module, self.optimizer, state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.module, state, options=StateDictOptions(full_state_dict=True))


def whole_copies(accelerator, root, names: tuple[str, ...]) -> None:
    """After training under FSDP: on the main process, each `root.<name>` (a Hugging Face model) becomes a whole,
    unsharded copy rebuilt from its config with the gathered weights, so that what then runs on the main process
    alone (sampling, a report, save_pretrained) needs no other process. A collective: every process calls it.
    (A state_dict() of a sharded module shards it again, so keeping the gathered weights in place would not do.)"""
    if not is_sharded(accelerator):
        return
    states = {name: full_model_state(accelerator, getattr(root, name)) for name in names}
    if not accelerator.is_main_process:
        return
    for name, state in states.items():
        sharded = getattr(root, name)
        whole = type(sharded)(sharded.config)
        whole.load_state_dict(state)
        if getattr(sharded, "generation_config", None) is not None:
            whole.generation_config = sharded.generation_config
        root._modules[name] = whole.to(accelerator.device).eval()
