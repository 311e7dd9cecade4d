"""Reward-model training step, TRL's RewardTrainer side by side with ours: `python -m benchmarks.reward`.

A K-way ranking gives K(K-1)/2 pairs. TRL's RewardTrainer.compute_loss forwards both sides of every pair;
ours (stages/reward/trainer.py) forwards each distinct answer of the batch once, with the same loss and
gradient. Both step on the same batches here: one or more whole prompts (as `reward.group_by_prompt`
keeps them), K random answers of 40-56 tokens after a 24-token prompt, the Bradley-Terry loss, backward
and an AdamW step. Timed blocks alternate between the two so a busy machine slows both alike; the
median is reported, with the ratio. Sizes: the tiny preset's model, and a wider one where compute
rather than per-step overhead dominates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

SIZES = {"tiny (1.3M)": dict(n_layer=4, n_head=4, n_embd=128), "small (~10M)": dict(n_layer=6, n_head=8, n_embd=384)}


def make_batch(k: int, prompts: int, vocab: int, pad: int, gen: torch.Generator) -> dict:
    """Every pair of `prompts` prompts' K answers, chosen rows then rejected rows, right-padded (TRL's layout)."""
    rows_c, rows_r = [], []
    for _ in range(prompts):
        prompt = torch.randint(5, vocab, (24,), generator=gen).tolist()
        answers = [prompt + torch.randint(5, vocab, (int(torch.randint(40, 57, (1,), generator=gen)),),
                                          generator=gen).tolist() for _ in range(k)]
        for i in range(k):
            for j in range(i + 1, k):
                rows_c.append(answers[i])
                rows_r.append(answers[j])
    rows = rows_c + rows_r
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


def trainers(dims: dict, tmp: str):
    """TRL's RewardTrainer and ours around two copies of the same scoring model."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from pipeline.config.schema import ModelSection
    from pipeline.lm.model import build_model
    from pipeline.lm.tokenizer import train_tokenizer
    from stages.reward.trainer import make_trainer_class

    tok = train_tokenizer(["def f(x): return x + 1"] * 50, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    build_model(ModelSection(block_size=128, **dims), tok).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    data = Dataset.from_dict({"chosen_ids": [[1, 2]], "rejected_ids": [[1, 3]]})
    out = []
    for cls in (RewardTrainer, make_trainer_class()):
        model = AutoModelForSequenceClassification.from_pretrained(tmp, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        args = RewardConfig(output_dir=f"{tmp}/out", report_to=[], use_cpu=not torch.cuda.is_available(),
                            disable_dropout=True, max_length=None)
        trainer = cls(model=model, args=args, train_dataset=data, processing_class=tok)
        model.train()
        out.append((trainer, model, torch.optim.AdamW(model.parameters(), lr=1e-4)))
    return out, tok


def step(trainer, model, opt, batch) -> None:
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks per trainer (alternating)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per training step (median of "
          f"{args.blocks} blocks of {args.steps}), TRL RewardTrainer vs ours")
    print(f"{'model':14} {'K':>2} {'prompts':>7} {'rows':>5} {'distinct':>8} {'TRL ms':>8} {'ours ms':>8} {'speedup':>7}")
    for name, dims in SIZES.items():
        with tempfile.TemporaryDirectory() as tmp:
            (peer, ours), tok = trainers(dims, tmp)
            for k, prompts in ((4, 2), (8, 1)):
                gen = torch.Generator().manual_seed(k)
                batch = make_batch(k, prompts, len(tok), tok.pad_token_id, gen)
                times = {0: [], 1: []}
                for side in (0, 1):  # warm-up
                    step(*(peer, ours)[side], batch)
                for _ in range(args.blocks):
                    for side in (0, 1):
                        t = time.perf_counter()
                        for _ in range(args.steps):
                            step(*(peer, ours)[side], batch)
                        times[side].append((time.perf_counter() - t) / args.steps * 1000)
                trl_ms, our_ms = statistics.median(times[0]), statistics.median(times[1])
                rows = batch["input_ids"].shape[0]
                print(f"{name:14} {k:>2} {prompts:>7} {rows:>5} {k * prompts:>8} {trl_ms:>8.1f} {our_ms:>8.1f} "
                      f"{trl_ms / our_ms:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
