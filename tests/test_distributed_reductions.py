"""PPO's reductions across processes equal one process's on the same gathered rollouts: two gloo processes
each hold half of fixed rollout tensors (uneven answer lengths, so a per-rank mean would differ) and must
compute what one process computes on all of it.

- the advantage whitening (stages/ppo/advantages.masked_whiten, global by default) all-reduces the sums;
- the policy/value loss divides each rank's token sum by the global token count / world, so DDP's average
  of the gradients is the token mean over every rank's tokens (stages/ppo/trainer.accumulate_gradients).
Exact up to float summation order: tolerance 1e-6 (float64 here).
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.runtime.processes import end_launch
from stages.ppo.advantages import masked_whiten
from stages.ppo.losses import ppo_loss

ROWS, LEN = 8, 6


def rollouts() -> dict:
    """Fixed rollout tensors: 8 answers of 1..6 tokens, float64 so only the summation order can differ."""
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([1, 6, 2, 5, 3, 6, 4, 1])
    mask = torch.arange(LEN)[None, :] < lengths[:, None]
    t = {k: torch.randn(ROWS, LEN, generator=g, dtype=torch.float64) for k in ("adv", "old_logp", "old_v", "ret")}
    return {**t, "mask": mask, "x": torch.randn(ROWS, 3, generator=g, dtype=torch.float64)}


class Heads(torch.nn.Module):
    """A policy and value head small enough to check gradients exactly: log-probs and values per token."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.logp = torch.nn.Parameter(torch.randn(3, LEN, generator=g, dtype=torch.float64) * 0.1)
        self.v = torch.nn.Parameter(torch.randn(3, LEN, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x @ self.logp - 1.0, x @ self.v


def loss_and_grads(model, r: dict, rows: slice, n_tokens: float):
    new_logp, new_v = model(r["x"][rows])
    terms = ppo_loss(new_logp, r["old_logp"][rows], r["adv"][rows], new_v, r["old_v"][rows], r["ret"][rows],
                     r["mask"][rows], n_tokens=n_tokens)
    terms.loss.backward()
    return terms


def one_process() -> dict:
    r = rollouts()
    model = Heads()
    loss_and_grads(model, r, slice(None), float(r["mask"].sum()))
    return {"whitened": masked_whiten(r["adv"], r["mask"]), "grad_logp": model.logp.grad, "grad_v": model.v.grad}


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        r = rollouts()
        rows = slice(rank * ROWS // 2, (rank + 1) * ROWS // 2)
        whitened = masked_whiten(r["adv"][rows], r["mask"][rows])  # global by default
        model = torch.nn.parallel.DistributedDataParallel(Heads())
        n_tok = r["mask"][rows].sum().double()
        dist.all_reduce(n_tok)  # as the trainer: the global minibatch's tokens / world
        loss_and_grads(model, r, rows, float(n_tok) / 2)
        parts = [torch.zeros_like(whitened) for _ in range(2)]
        dist.all_gather(parts, whitened)
        if rank == 0:
            out.update(whitened=torch.cat(parts), grad_logp=model.module.logp.grad.clone(),
                       grad_v=model.module.v.grad.clone())
        end_launch()  # both leave together, as a stage's processes do: one that exits alone can abort
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_whitening_and_the_token_mean_over_two_processes_equal_one_process():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(free_port(), out), nprocs=2, join=True)
        two = dict(out)
    one = one_process()
    r = rollouts()
    # the halves differ: per-rank statistics would not give the global answer (the test can fail)
    assert not torch.allclose(masked_whiten(r["adv"][:4], r["mask"][:4]), one["whitened"][:4])
    for k in ("whitened", "grad_logp", "grad_v"):
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6, msg=k)
