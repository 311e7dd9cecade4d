"""The pretraining loop: next-token prediction on a token file, under `accelerate`.

Every batch is a function of (seed, step): the global batch of a step is drawn from a generator
seeded by both, and rank r of W reads the r-th slice of each micro-batch. So a resumed run sees
exactly the batches an uninterrupted one would, and 2 processes with the same global batch
compute the same loss as 1 process (the tests check both).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.artifacts.checkpoint import LATEST, load_checkpoint, restore_rng, save_checkpoint
from pipeline.artifacts.finite import check_finite, check_finite_params
from pipeline.artifacts.metrics import MetricsLogger, progress
from pipeline.config.schema import TrainSection
from pipeline.errors import UserError
from pipeline.lm.forward import NextTokenLoss
from pipeline.runtime.batch import BatchSplit, split
from pipeline.runtime.sharding import (
    describe_shards,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_optimizer_state,
)


def lr_at(step: int, cfg: TrainSection) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress_ = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress_)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainSection, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and embeddings only, not on norms or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    try:  # the fused kernel exists for CPU and CUDA in recent torch; foreach is the fallback
        return torch.optim.AdamW(groups, fused=device.type in ("cpu", "cuda"), **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


@dataclass
class Batches:
    """Random windows of `block + 1` tokens; the global batch of a step depends only on (seed, step)."""

    tokens: np.ndarray
    block: int
    seed: int
    per_rank: int
    world: int
    rank: int
    accum: int

    @property
    def global_size(self) -> int:
        return self.per_rank * self.world * self.accum

    def micro_batches(self, step: int, device: torch.device):
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.block, size=self.global_size)
        for micro in range(self.accum):
            first = (micro * self.world + self.rank) * self.per_rank
            yield _windows(self.tokens, starts[first:first + self.per_rank], self.block + 1, device)


def _windows(tokens: np.ndarray, starts, length: int, device: torch.device):
    x = torch.from_numpy(np.stack([tokens[s:s + length] for s in starts]).astype(np.int64))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return x[:, :-1], x[:, 1:]


def eval_window_starts(n_tokens: int, block: int, n_windows: int) -> np.ndarray:
    """Where `evaluate`'s windows of `block + 1` tokens start: evenly spaced over the validation tokens."""
    block = min(block, n_tokens - 1)
    n = max(1, min(n_windows, (n_tokens - 1) // block))
    return np.linspace(0, n_tokens - block - 1, n).astype(np.int64)


@torch.no_grad()
def evaluate(loss_module: NextTokenLoss, tokens: np.ndarray, block: int, n_windows: int, batch_size: int,
             accelerator, bytes_per_token: float) -> dict:
    """Loss, perplexity and bits per byte on evenly spaced validation windows (split over ranks)."""
    block = min(block, len(tokens) - 1)
    every = eval_window_starts(len(tokens), block, n_windows)
    starts = every[accelerator.process_index::accelerator.num_processes]
    # The same number of forwards on every process: under FSDP each one is a collective (a process with no
    # windows left evaluates the first one again and counts nothing).
    rounds = math.ceil(math.ceil(len(every) / accelerator.num_processes) / batch_size)
    was_training = loss_module.training
    loss_module.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for i in range(0, rounds * batch_size, batch_size):
        mine = starts[i:i + batch_size]
        x, y = _windows(tokens, mine if len(mine) else every[:1], block + 1, accelerator.device)
        with accelerator.autocast():
            loss = loss_module(x, y)
        if len(mine):
            total += torch.stack([loss.double() * y.numel(), torch.tensor(y.numel(), device=total.device).double()])
    loss_module.train(was_training)
    total = accelerator.reduce(total, reduction="sum")
    loss = (total[0] / total[1].clamp(min=1)).item()
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_bpb": loss / math.log(2) / bytes_per_token}


def batch_split(cfg: TrainSection, block: int, world: int) -> BatchSplit:
    """train.tokens_per_step (null: one micro-batch of batch_size sequences) over `world` processes: the same
    sequences per step whatever the number of processes, in micro-batches of at most batch_size."""
    if not cfg.tokens_per_step:
        return split(cfg.batch_size, world, cfg.batch_size, key="train.batch_size", unit="sequences")
    if cfg.tokens_per_step % block:
        raise UserError(f"train.tokens_per_step={cfg.tokens_per_step} is not a whole number of sequences of "
                        f"model.block_size={block} tokens: make it a multiple of {block}.")
    return split(cfg.tokens_per_step // block, world, cfg.batch_size, key="train.tokens_per_step",
                 unit="sequences")


def gradient_accumulation(cfg: TrainSection, block: int, world: int) -> int:
    return batch_split(cfg, block, world).accum


def train_step(module, optimizer, micro_batches, *, lr: float, accum: int, grad_clip: float, accelerator):
    """One optimizer step over `accum` micro-batches; returns the mean loss as a tensor (no host sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = None
    for micro, (x, y) in enumerate(micro_batches):
        last = micro == accum - 1
        with nullcontext() if last or accelerator.num_processes == 1 else accelerator.no_sync(module), \
                accelerator.autocast():
            loss = module(x, y) / accum
            accelerator.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    if grad_clip > 0:
        accelerator.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@dataclass
class _Saved:
    """A state dict gathered for save_checkpoint, which asks its model and optimizer for one."""

    state: dict

    def state_dict(self) -> dict:
        return self.state


def train_lm(model, train_tokens: np.ndarray, val_tokens: np.ndarray, *, cfg: TrainSection, block: int, seed: int,
             accelerator, checkpoint_dir, metrics_dir, val_bytes_per_token: float,
             compile_model: bool = False) -> dict:
    """Train `model` (an HF causal LM) in place; returns the final metrics."""
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    parts = batch_split(cfg, block, world)
    accum = parts.accum
    batches = Batches(train_tokens, block, seed, parts.micro, world, rank, accum)
    if len(train_tokens) <= block + 1:
        raise UserError(f"the training text has {len(train_tokens)} tokens, fewer than model.block_size+1="
                        f"{block + 1}; give it more text or lower model.block_size.")
    loss_module = NextTokenLoss(model).to(device)
    if is_sharded(accelerator):
        loss_module.lean = False  # the lean forward reads layer weights directly; FSDP gathers them in the layer calls
    optimizer = make_optimizer(loss_module, cfg, device)
    start_step, tokens_seen = 0, 0
    loss_sum, steps_in_sum = torch.zeros((), device=device), 0  # the training loss since the last log
    state = load_checkpoint(checkpoint_dir, "train.resume") if cfg.resume else None
    if state is not None:
        model.load_state_dict(state["model"])  # full weights, before FSDP shards them
        restore_rng(state)
        start_step, tokens_seen = state["step"], state["tokens_seen"]
        if "loss_sum" in state:  # so the first logged loss after a resume averages the same steps
            loss_sum, steps_in_sum = state["loss_sum"].to(device), state["steps_in_sum"]
        accelerator.print(f"resuming from step {start_step} ({checkpoint_dir})")
    if compile_model:
        loss_module.compile()
    # with its optimizer: FSDP2 shards the model and points the optimizer at the shards (DDP ignores it)
    ddp_module, optimizer = accelerator.prepare(loss_module, optimizer)
    if state is not None:
        load_full_optimizer_state(accelerator, ddp_module, optimizer, state["optimizer"])
    describe_shards(accelerator, ddp_module, "model")
    tokens_per_step = batches.global_size * block
    accelerator.print(f"{batches.global_size} sequences x {block} tokens = {tokens_per_step} tokens per step "
                      f"({parts.micro} per micro-batch x {world} processes x {accum} accumulation steps)")
    logger = MetricsLogger(metrics_dir, enabled=accelerator.is_main_process, resume_step=start_step)
    bar = progress(cfg.max_steps, start_step, "pretrain", enabled=accelerator.is_main_process)
    stop_after = int(os.environ.get("RLHF_STOP_AFTER_STEP", 0))  # test hook: simulate a kill (Ctrl-C)
    n_val = cfg.eval_batches * cfg.batch_size  # windows in all; shared by the processes, so W does not change them
    last = {}
    t0, tokens_at_t0, excluded, train_time = time.perf_counter(), tokens_seen, 0.0, 0.0
    tokens_at_start = tokens_seen
    last_good = f"{checkpoint_dir}/{LATEST} (step {start_step})" if start_step else None
    ddp_module.train()
    for step in range(start_step, cfg.max_steps):
        lr = lr_at(step, cfg)
        loss_sum += train_step(ddp_module, optimizer, batches.micro_batches(step, device), lr=lr, accum=accum,
                               grad_clip=cfg.grad_clip, accelerator=accelerator)
        steps_in_sum += 1
        tokens_seen += tokens_per_step
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            train_loss = accelerator.reduce(loss_sum, reduction="mean").item() / steps_in_sum
            check_finite("pretrain", {"train_loss": train_loss}, step=done, last_good=last_good)
            loss_sum.zero_()
            steps_in_sum = 0
            elapsed = time.perf_counter() - t0 - excluded  # evaluation and checkpoints do not count
            train_time += elapsed
            tok_s = (tokens_seen - tokens_at_t0) / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.1e}")
            logger.log(done, train_loss=train_loss, lr=lr, tokens_seen=tokens_seen, tokens_per_s=tok_s)
            t0, tokens_at_t0, excluded = time.perf_counter(), tokens_seen, 0.0
        pause = time.perf_counter()
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            last = evaluate(loss_module, val_tokens, block, n_val, cfg.batch_size, accelerator, val_bytes_per_token)
            check_finite("pretrain", last, step=done, last_good=last_good)
            logger.log(done, **last)
            if accelerator.is_main_process:
                bar.write(f"step {done}: val loss {last['val_loss']:.4f}  ppl {last['val_ppl']:.2f}  "
                          f"bpb {last['val_bpb']:.4f}")
        if done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
            check_finite_params("pretrain", model, step=done, last_good=last_good)
            weights, moments = full_model_state(accelerator, model), full_optimizer_state(accelerator, ddp_module,
                                                                                        optimizer)
            if accelerator.is_main_process:
                save_checkpoint(checkpoint_dir, model=_Saved(weights), optimizer=_Saved(moments), step=done,
                                tokens_seen=tokens_seen, loss_sum=loss_sum.detach().cpu(), steps_in_sum=steps_in_sum)
            last_good = f"{checkpoint_dir}/{LATEST} (step {done})"
            accelerator.wait_for_everyone()
        excluded += time.perf_counter() - pause
        if done == stop_after:
            raise KeyboardInterrupt
    bar.close()
    logger.close()
    if not last:  # resumed at max_steps: nothing trained, still report where the model stands
        last = evaluate(loss_module, val_tokens, block, n_val, cfg.batch_size, accelerator, val_bytes_per_token)
    run_tok_s = (tokens_seen - tokens_at_start) / train_time if train_time else 0.0
    return {**last, "tokens_seen": tokens_seen, "steps": cfg.max_steps, "tokens_per_step": tokens_per_step,
            "tokens_per_s": round(run_tok_s, 1), "start_step": start_step}
