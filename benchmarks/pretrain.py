"""Pretraining loop speed, side by side with nanoGPT's, in one process: `python -m benchmarks.pretrain`.

Both train at nanoGPT's small shakespeare-char size (4 layers, 4 heads, width 128, context 64,
12 sequences, 65-token vocabulary, no dropout) on the same random tokens. nanoGPT runs its own
model.py with the step of its train.py (its configure_optimizers, clip 1.0, zero_grad(set_to_none),
fp32 on CPU, bf16 autocast on GPU); ours runs `stages.pretrain.loop.train_step` on our HF Llama model.
Timed blocks alternate between the two so a busy machine slows both alike; the median is reported.
Then our loop at a preset's size. nanoGPT is not vendored: clone it into .bench/nanoGPT (see below).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

NANOGPT = Path(".bench/nanoGPT")
DIMS = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65)


def matmul_peak(device: torch.device, dtype=torch.float32) -> float:
    """Measured FLOP/s of a large square matmul: the denominator of MFU. On the CPU, per CPU-second
    (like the loop rates below), so that other load on a shared machine cancels out."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    n = 2048 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        _sync(device)
        t = clock()
        for _ in range(5):
            a @ b
        _sync(device)
        best = max(best, 5 * 2 * n**3 / (clock() - t))
    return best


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _random_tokens(vocab: int, n: int = 200_000) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, n).astype(np.uint16)


def nanogpt_runner(device: torch.device, dtype: torch.dtype):
    """nanoGPT's model and the body of its train.py loop, set up as its CPU shakespeare-char recipe."""
    sys.path.insert(0, str(NANOGPT.resolve()))
    from model import GPT, GPTConfig  # nanoGPT's own file

    d = DIMS
    model = GPT(GPTConfig(n_layer=d["n_layer"], n_head=d["n_head"], n_embd=d["n_embd"], block_size=d["block_size"],
                          vocab_size=d["vocab_size"], dropout=0.0, bias=False)).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.type)
    data = _random_tokens(d["vocab_size"])
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)

    def get_batch():
        ix = torch.randint(len(data) - d["block_size"], (d["batch_size"],))
        x = torch.stack([torch.from_numpy(data[i:i + d["block_size"]].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + d["block_size"]].astype(np.int64)) for i in ix])
        return x.to(device), y.to(device)

    batch = [get_batch()]

    def step(_):
        x, y = batch[0]
        with ctx:
            _, loss = model(x, y)
        batch[0] = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    n = model.get_num_params()
    flops = 6 * n + 12 * d["n_layer"] * d["n_embd"] * d["block_size"]
    return step, flops


def ours_runner(device: torch.device, model_cfg: dict, batch_size: int, tokens_per_step: int | None = None,
                compile_model: bool = False):
    from accelerate import Accelerator
    from transformers import LlamaForCausalLM

    from pipeline.config.schema import ModelSection, TrainSection
    from pipeline.lm.forward import NextTokenLoss
    from pipeline.lm.model import flops_per_token, llama_config
    from stages.pretrain.loop import Batches, gradient_accumulation, make_optimizer, train_step

    vocab = model_cfg.pop("vocab_size")
    section = ModelSection(**model_cfg)
    config = llama_config(section, vocab, pad_id=0, eos_id=1)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    train = TrainSection(batch_size=batch_size, tokens_per_step=tokens_per_step, lr=1e-3, weight_decay=0.1)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no")
    loss_module = NextTokenLoss(model).to(accelerator.device)
    optimizer = make_optimizer(loss_module, train, accelerator.device)
    if compile_model:
        loss_module.compile()
    module = accelerator.prepare(loss_module)
    accum = gradient_accumulation(train, section.block_size, 1)
    batches = Batches(_random_tokens(vocab), section.block_size, 0, batch_size, 1, 0, accum)

    def step(i):
        return train_step(module, optimizer, batches.micro_batches(i, accelerator.device), lr=1e-3, accum=accum,
                          grad_clip=1.0, accelerator=accelerator)

    return step, flops_per_token(model, section.block_size), batches.global_size * section.block_size


def time_block(step, n_steps: int, start: int, device, cpu: bool = False) -> float:
    """Seconds for n_steps: wall clock, or process CPU time (steadier on a shared machine)."""
    clock = time.process_time if cpu else time.perf_counter
    _sync(device)
    t = clock()
    loss = None
    for i in range(start, start + n_steps):
        loss = step(i)
    loss.item()  # one host sync at the end, as a real loop's logging would do
    _sync(device)
    return clock() - t


def peak_memory(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (CUDA, allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB (process peak RSS, both loops)"


def compare_with_nanogpt(device, rounds: int, steps: int, peak: float, compile_model: bool) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokens = DIMS["batch_size"] * DIMS["block_size"]
    ours, our_flops, _ = ours_runner(device, {k: DIMS[k] for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                     "vocab_size")}, DIMS["batch_size"],
                                        compile_model=compile_model)
    have_nano = (NANOGPT / "model.py").is_file()
    if have_nano:
        nano, nano_flops = nanogpt_runner(device, dtype)
    else:
        print(f"nanoGPT not found in {NANOGPT}/: to compare, run\n"
              f"  git clone https://github.com/karpathy/nanoGPT {NANOGPT}\n"
              "(it is only read by this benchmark, never vendored). Reporting our numbers alone.")
    warmup = time_block(ours, 5, 0, device)  # warm-up: allocator, kernels, lazy init (and compilation)
    if compile_model:
        print(f"torch.compile of our model: {warmup:.0f} s (once per run)")
    if have_nano:
        time_block(nano, 5, 0, device)
    rates: dict[str, list[float]] = {"ours": [], "nanoGPT": []}
    cpu = device.type == "cpu"  # CPU seconds: a busy machine's other processes do not count
    for r in range(rounds):
        rates["ours"].append(tokens * steps / time_block(ours, steps, 5 + r * steps, device, cpu))
        if have_nano:
            rates["nanoGPT"].append(tokens * steps / time_block(nano, steps, 0, device, cpu))
    print(f"\nnanoGPT shakespeare-char size {DIMS}, {device.type}, {torch.get_num_threads()} threads, "
          f"{rounds} alternating rounds x {steps} steps (median){', ours compiled' if compile_model else ''}"
          f"{'; tokens per CPU-second (all threads), robust to other load' if cpu else ''}:")
    for name, flops in (("ours", our_flops), ("nanoGPT", nano_flops if have_nano else 0)):
        if rates[name]:
            tok_s = statistics.median(rates[name])
            print(f"  {name:8s} {tok_s:10,.0f} tokens/s   MFU {tok_s * flops / peak:6.1%}   "
                  f"({flops / 1e6:.2f} MFLOP/token)")
    if have_nano:
        ratios = [a / b for a, b in zip(rates["ours"], rates["nanoGPT"])]
        print(f"  ratio ours/nanoGPT: median {statistics.median(ratios):.2f} "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"  peak memory: {peak_memory(device)}")


def bench_preset(device, preset: str, steps: int, peak: float) -> None:
    from pipeline.config.loader import load_config

    cfg = load_config(preset)
    m = cfg.model
    dims = dict(n_layer=m.n_layer, n_head=m.n_head, n_kv_head=m.n_kv_head, n_embd=m.n_embd,
                block_size=m.block_size, vocab_size=cfg.tokenizer.vocab_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step, flops, tokens = ours_runner(device, dims, cfg.train.batch_size, cfg.train.tokens_per_step)
    time_block(step, 2, 0, device)
    tok_s = tokens * steps / time_block(step, steps, 2, device, cpu=device.type == "cpu")
    unit = "tokens per CPU-second" if device.type == "cpu" else "tokens/s"
    print(f"\n{preset}: {tokens} tokens/step, {steps} steps: {tok_s:,.0f} {unit}, MFU {tok_s * flops / peak:.1%}, "
          f"peak memory {peak_memory(device)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--preset", default="configs/tiny.yaml", help="also time our loop at this preset's size")
    parser.add_argument("--preset-steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (run.compile=true)")
    args = parser.parse_args(argv)
    from pipeline.runtime.device import pick_device

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    unit = "per CPU-second, all threads" if device.type == "cpu" else "per second"
    print(f"measured matmul peak: {peak / 1e9:,.1f} GFLOP {unit} ({device}, {torch.get_num_threads()} threads)")
    compare_with_nanogpt(device, args.rounds, args.steps, peak, args.compile)
    if args.preset and args.preset_steps > 0:
        bench_preset(device, args.preset, args.preset_steps, peak)


if __name__ == "__main__":
    main()
