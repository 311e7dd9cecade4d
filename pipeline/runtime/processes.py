"""The processes of one launch sharing a sampling job: which units of work are this process's, and every
process's results gathered, in the order one process would have produced them.

Under `accelerate launch` (torchrun) there are `world` processes; with a plain `python -m stages.x` there is
one, and every method here is then the identity, with no torch.distributed at all. The sampling stages
(rank, eval) split their prompts by whole units (a chunk of prompts, a batch) so that each unit is sampled
exactly as one process would sample it: same rows, same padding, same seeds. The artifact is then the
same, byte for byte, whatever the number of processes.

A collective waits at most `collective_timeout()` seconds (RLHF_COLLECTIVE_TIMEOUT, default 600): a process
whose partner died (killed, out of memory, its machine lost) fails with one line instead of waiting for
torch's default half hour. On one machine torchrun stops the other processes as soon as one dies; the
timeout is what bounds the wait across machines.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

TIMEOUT_VARIABLE = "RLHF_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600


def collective_timeout() -> float:
    """Seconds a collective (a gather, a barrier, a gradient all-reduce) may wait for the other processes."""
    from pipeline.errors import UserError

    raw = os.environ.get(TIMEOUT_VARIABLE, "")
    if not raw:
        return float(DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UserError(f"{TIMEOUT_VARIABLE}={raw!r}: give the seconds a process waits for the others "
                        f"(a number > 0; default {DEFAULT_TIMEOUT_S}).")
    return value


def launched() -> bool:
    """Whether this process was started by a launcher with others (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_state():
    """accelerate's state of this launch, its process group made with our collective timeout. The first
    call decides (accelerate keeps one state per process), so every stage's start (pipeline/chain/entry.py)
    calls this before its Accelerator or Trainer is made; later ones share it. Without CUDA the processes are
    CPU processes over gloo (as pipeline.runtime.device.accelerate_state says: without cpu=True each would
    be a lone process). A launched process also says in one line why it stops when its partners do."""
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    if not launched():
        return PartialState(cpu=cpu)
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=collective_timeout()))
    _say_why_a_launch_stops()
    return state


def end_launch() -> None:
    """Every process of a launch that finished its stage leaves together, its process group closed: a process
    that exits while its group's threads still run can abort ("terminate called without an active exception"),
    and the launcher then stops its partners, the main one perhaps in the middle of its commit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


RERUN = "nothing was committed; re-run the same command to resume"


def partner_failure_line(e: BaseException) -> str | None:
    """One line for a collective that failed because another process of the launch is gone or stuck (its
    connection reset, or no answer within the timeout); None for any other error (its traceback stays)."""
    import torch.distributed as dist

    text = str(e)
    if not (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and ("gloo" in text or "NCCL" in text))):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's source location: not the user's business
    if "imed out" in text or "timeout" in text.lower():
        why = (f"the other processes did not answer within {collective_timeout():g} s ({TIMEOUT_VARIABLE}; one "
               "is stuck or its machine is gone)")
    else:
        why = f"another process of this launch stopped ({first[:120]})"
    return f"process {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}: {why}; {RERUN}."


def _say_why_a_launch_stops() -> None:
    """A dead partner shows up in this process as an error inside a collective, or as the launcher's SIGTERM:
    each becomes one line on stderr instead of a traceback or silence (RLHF_DEBUG=1 keeps the traceback)."""
    import signal
    import sys

    if os.environ.get("RLHF_DEBUG"):
        return
    default_hook = sys.excepthook

    def hook(kind, value, tb):
        line = partner_failure_line(value) if isinstance(value, Exception) else None
        if line is None:
            default_hook(kind, value, tb)
        else:
            print(f"\nerror: {line}", file=sys.stderr, flush=True)

    def stopped(signum, frame):
        print(f"\nerror: process {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}: stopped by "
              f"the launcher (another process of this launch failed); {RERUN}.", file=sys.stderr, flush=True)
        sys.exit(128 + signum)  # exit through Python: the lock is released and unfinished work kept

    sys.excepthook = hook
    signal.signal(signal.SIGTERM, stopped)


@dataclass(frozen=True)
class Processes:
    """This process's place in the launch: `rank` of `world`; rank 0 is the main process, the one that writes."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of_launch(cls) -> Processes:
        if not launched():
            return cls()
        state = launch_state()
        return cls(state.process_index, state.num_processes)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, units: list) -> list:
        """This process's share of `units`: every world-th one from its rank (long and short units alternate
        when they are sorted by length, so the shares take about the same time)."""
        return units[self.rank::self.world]

    def gather(self, mine: dict) -> dict:
        """Every process's results merged ({unit index: result} from each), on every process."""
        if self.world == 1:
            return dict(mine)
        import torch.distributed as dist

        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, mine)
        merged: dict = {}
        for part in everyone:
            merged.update(part)
        return merged

    def wait_for_main(self) -> None:
        """A barrier: the other processes wait until the main one has prepared what they read."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


ONE = Processes()  # a plain run: the default of every function that takes `processes`
