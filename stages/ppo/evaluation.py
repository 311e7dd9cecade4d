"""Evaluation of a PPO policy on development prompts (never trained on): answers to fixed prompts
(samples.md) with their reward-model and gold scores during training, and the final PPO-vs-SFT
comparison and quality-bar verdict (pipeline/judge/comparison.py, the evaluator evaluation uses)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pipeline.artifacts.atomic import write_text
from pipeline.judge.comparison import ModelAnswers, compare_models
from pipeline.judge.stats import mean_std
from stages.ppo.rollout import (
    RolloutBatch,
    answer_token_logprobs,
    encode_prompts,
    generate,
    left_pad,
    micro_batched,
    sequence_scores,
)


@torch.no_grad()
def answer(policy, tokenizer, prompt_ids: list[list[int]], gen_config, batch_size: int, seed: int,
           device) -> RolloutBatch:
    """Sample one answer per prompt under a fixed seed, without disturbing the training RNG."""
    q, m = left_pad(prompt_ids, tokenizer.pad_token_id)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        resp, mask, eos = generate(policy, q.to(device), m.to(device), gen_config, tokenizer.eos_token_id,
                                   tokenizer.pad_token_id, batch_size)
    return RolloutBatch(q.to(device), m.to(device), resp, mask, eos)


@torch.no_grad()
def rm_scores(reward_model, b: RolloutBatch, batch_size: int) -> torch.Tensor:
    ids, attn = b.input_ids, b.attention_mask
    return micro_batched(lambda s: sequence_scores(reward_model, ids[s], attn[s]), len(b), batch_size)


@torch.no_grad()
def sequence_logprobs(model, b: RolloutBatch, temperature: float, batch_size: int) -> torch.Tensor:
    ids, attn = b.input_ids, b.attention_mask
    return micro_batched(lambda s: answer_token_logprobs(model, ids[s], attn[s], b.response_ids[s], b.prompt_len,
                                                         temperature), len(b), batch_size)


def texts(tokenizer, b: RolloutBatch) -> list[str]:
    return [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(b.response_ids, b.response_mask)]


def gold_scores(answers: list[str], golds: list[str | None]) -> list[float | None]:
    from data.gold import gold_score

    return [gold_score(a, g) if g else None for a, g in zip(answers, golds)]


def gold_mean(answers: list[str], golds: list[str | None]) -> float | None:
    return mean_std([s for s in gold_scores(answers, golds) if s is not None])[0]


class SampleWriter:
    """Every few updates: answers to the same development prompts into samples.md, and their scores."""

    def __init__(self, out_dir, tokenizer, prompts: list, golds: list | None, *, enabled: bool = True,
                 resume_step: int | None = None, seed: int = 1234, shown: int = 4):
        self.path = Path(out_dir) / "samples.md"
        self.enabled, self.seed, self.shown = enabled, seed, shown
        self.prompt_ids, _ = encode_prompts(tokenizer, prompts, 10**9)
        self.prompts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        self.golds = golds or [None] * len(prompts)
        if enabled:
            _drop_sections_after(self.path, resume_step)

    def write(self, step: int, trainer) -> dict:
        policy = trainer.acc.unwrap_model(trainer.model).policy
        fb = trainer.cfg.forward_batch_size
        b = answer(policy, trainer.tok, self.prompt_ids, trainer.gen_config, fb, self.seed, trainer.acc.device)
        answers = texts(trainer.tok, b)
        if trainer.reward_fn is not None:
            scores = torch.as_tensor(trainer.reward_fn(b), dtype=torch.float32)
        else:
            scores = (rm_scores(trainer.rm, b, fb) - trainer.score_mean) / trainer.score_std
        metrics = {"eval/score": scores.mean().item(), "eval/response_length": b.response_mask.sum(1).float().mean().item()}
        gold = gold_mean(answers, self.golds)
        if gold is not None:
            metrics["eval/gold"] = gold
        if trainer.logger:
            trainer.logger.log(step, **metrics)
        if self.enabled:
            lines = [f"## Step {step}\n", "  ".join(f"{k}={v:.3f}" for k, v in metrics.items()) + "\n"]
            for p, a, s, g in list(zip(self.prompts, answers, scores.tolist(), self.golds))[: self.shown]:
                gold = f"\n*Gold:* {g}\n" if g else ""
                lines.append(f"**Prompt:** {p}\n\n**Answer** (score {s:+.2f}): {a}\n{gold}")
            with open(self.path, "a") as f:
                f.write("\n".join(lines) + "\n")
        return metrics


def _drop_sections_after(path: Path, step: int | None) -> None:
    """On resume, forget samples written after the checkpoint (they will be written again); on a
    fresh start (`step` None), all of them."""
    if not path.exists():
        return
    if step is None:
        path.unlink()
        return
    parts = re.split(r"(?m)^(?=## Step \d+)", path.read_text())
    kept = [p for p in parts if not (m := re.match(r"## Step (\d+)", p)) or int(m.group(1)) <= step]
    write_text(path, "".join(kept))  # atomic: a kill here keeps the samples before the checkpoint


@torch.no_grad()
def compare_to_reference(policy, ref, reward_model, tokenizer, prompts: list, golds: list | None, *,
                         gen_config, temperature: float, batch_size: int, score_stats, kl_budget: float,
                         device, seed: int = 4321) -> dict:
    """PPO against SFT on development prompts (a prompt may be listed several times: its answers are
    sampled independently and the intervals count it once), by the evaluator evaluation uses."""
    prompt_ids, _ = encode_prompts(tokenizer, prompts, 10**9)
    mean, std = score_stats
    ppo_b = answer(policy, tokenizer, prompt_ids, gen_config, batch_size, seed, device)
    sft_b = answer(ref, tokenizer, prompt_ids, gen_config, batch_size, seed, device)
    golds = golds or [None] * len(prompt_ids)
    scored = []
    for name, b in (("ppo", ppo_b), ("sft", sft_b)):
        answers = texts(tokenizer, b)
        gold = gold_scores(answers, golds) if all(golds) else None
        rm = ((rm_scores(reward_model, b, batch_size) - mean) / std).tolist()
        scored.append(ModelAnswers(name, answers, rm, gold))
    keep = ppo_b.response_mask.bool()
    own, under_ref = (sequence_logprobs(m, ppo_b, temperature, batch_size) for m in (policy, ref))
    kl_logprobs = ([row[k].tolist() for row, k in zip(own, keep)], [row[k].tolist() for row, k in zip(under_ref, keep)])
    return compare_models(*scored, prompts, kl_budget=kl_budget, kl_logprobs=kl_logprobs)
