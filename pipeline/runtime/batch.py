"""The global batch a preset states, split over however many processes run it.

A recipe is the batch per optimizer step over all processes (tokens, conversations, pairs, answers). The
launch decides the number of processes N; this module derives what each process does: a micro-batch of
at most the configured `batch_size` (a memory limit, not part of the recipe) and as many accumulation steps
as make up its share. So `make sft NPROC=2` trains on the same batches as one process, and a global batch
that N processes cannot share equally is refused in one line before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.errors import UserError

# The one global-batch key of each trainer-based stage section (the stages' config sections name it so).
PER_STEP_KEYS = ("sequences_per_step", "pairs_per_step", "answers_per_step")


@dataclass(frozen=True)
class BatchSplit:
    global_size: int  # items per optimizer step, over all processes
    processes: int
    micro: int  # items per micro-batch on each process
    accum: int  # micro-batches per optimizer step on each process
    unit: str

    def describe(self) -> str:
        return (f"{self.global_size} {self.unit} per step ({self.micro} per micro-batch x {self.processes} "
                f"processes x {self.accum} accumulation steps)")


def process_count() -> int:
    """The processes of this launch (torchrun and `accelerate launch` set WORLD_SIZE; a plain run is 1)."""
    return max(1, int(os.environ.get("WORLD_SIZE", 1)))


def split(global_size: int, processes: int, max_micro: int, *, key: str, unit: str) -> BatchSplit:
    """Each process's share of `global_size` as micro-batches of at most `max_micro`: the fewest
    accumulation steps that divide the share evenly (equal micro-batches keep the mean exact)."""
    if global_size % processes:
        raise UserError(f"{key}={global_size} {unit} cannot be shared by {processes} processes: make it a multiple "
                        f"of {processes} (or run on a number of processes that divides it).")
    share = global_size // processes
    accum = -(-share // max_micro)
    while share % accum:
        accum += 1
    return BatchSplit(global_size, processes, share // accum, accum, unit)


def section_split(section, name: str, unit: str, processes: int | None = None) -> BatchSplit:
    """The split of a stage section with `batch_size`, `grad_accum` and one of PER_STEP_KEYS: the stated
    global batch, or (null) batch_size x grad_accum, the recipe one process runs, whatever N is."""
    key = next((k for k in PER_STEP_KEYS if hasattr(section, k)), None)
    stated = getattr(section, key) if key else None
    if stated is None:
        stated = section.batch_size * section.grad_accum
    elif section.grad_accum != 1:
        raise UserError(f"{name}.grad_accum={section.grad_accum} and {name}.{key}={stated} both set the batch: "
                        f"leave {name}.grad_accum out ({name}.batch_size caps each process's micro-batch, the "
                        "accumulation makes up the rest).")
    return split(stated, processes or process_count(), section.batch_size, key=f"{name}.{key or 'batch_size'}",
                 unit=unit)


def announce(name: str, batch: BatchSplit) -> BatchSplit:
    """Print the resolved split once per launch (the main process; RANK is unset in a plain run)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"{name}: {batch.describe()}", flush=True)
    return batch
