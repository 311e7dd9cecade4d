"""Held-out evaluation of a PPO policy: answers to fixed prompts (samples.md), their reward-model
and gold scores during training, and the final PPO-vs-SFT verdict of the quality bar."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pipeline.atomic import write_text
from pipeline.quality_bar import quality_verdict
from pipeline.stats import mean_std, paired_difference, win_rate
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
    """Every few updates: answers to the same held-out prompts into samples.md, and their scores."""

    def __init__(self, out_dir, tokenizer, prompts: list, golds: list | None, *, enabled: bool = True,
                 resume_step: int = 0, seed: int = 1234, shown: int = 4):
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


def _drop_sections_after(path: Path, step: int) -> None:
    """On resume, forget samples written after the checkpoint (they will be written again)."""
    if not path.exists():
        return
    parts = re.split(r"(?m)^(?=## Step \d+)", path.read_text())
    kept = [p for p in parts if not (m := re.match(r"## Step (\d+)", p)) or int(m.group(1)) <= step]
    write_text(path, "".join(kept))  # atomic: a kill here keeps the samples before the checkpoint


@torch.no_grad()
def compare_to_reference(policy, ref, reward_model, tokenizer, prompts: list, golds: list | None, *,
                         gen_config, temperature: float, batch_size: int, score_stats, kl_budget: float,
                         device, seed: int = 4321) -> dict:
    """The quality bar on held-out prompts: RM win rate of PPO over SFT, KL(PPO || SFT), gold metric."""
    prompt_ids, _ = encode_prompts(tokenizer, prompts, 10**9)
    mean, std = score_stats
    ppo_b = answer(policy, tokenizer, prompt_ids, gen_config, batch_size, seed, device)
    sft_b = answer(ref, tokenizer, prompt_ids, gen_config, batch_size, seed, device)
    ppo_s = ((rm_scores(reward_model, ppo_b, batch_size) - mean) / std).tolist()
    sft_s = ((rm_scores(reward_model, sft_b, batch_size) - mean) / std).tolist()
    kl = (sequence_logprobs(policy, ppo_b, temperature, batch_size)
          - sequence_logprobs(ref, ppo_b, temperature, batch_size)).sum(1)
    golds = golds or [None] * len(prompt_ids)
    wr = win_rate(ppo_s, sft_s)
    gold_pairs = [(a, b) for a, b in zip(gold_scores(texts(tokenizer, ppo_b), golds),
                                         gold_scores(texts(tokenizer, sft_b), golds)) if a is not None]
    gold_diff = paired_difference([a for a, _ in gold_pairs], [b for _, b in gold_pairs])
    report = {
        "n_pairs": len(prompt_ids), "win_rate": wr["win_rate"], "win_rate_ci": [wr["ci_low"], wr["ci_high"]],
        "rm_score_ppo": sum(ppo_s) / len(ppo_s), "rm_score_sft": sum(sft_s) / len(sft_s),
        "kl_to_sft": kl.mean().item(), "kl_budget": kl_budget,
        "gold_ppo": mean_std([a for a, _ in gold_pairs])[0], "gold_sft": mean_std([b for _, b in gold_pairs])[0],
        "gold_diff_ci": [gold_diff["ci_low"], gold_diff["ci_high"]] if gold_pairs else None,
        "length_ppo": ppo_b.response_mask.sum(1).float().mean().item(),
        "length_sft": sft_b.response_mask.sum(1).float().mean().item(),
    }
    report["verdict"] = verdict(report)
    return report


def verdict(r: dict) -> str:
    return quality_verdict(win_rate=r["win_rate"], rm_candidate=r["rm_score_ppo"], rm_baseline=r["rm_score_sft"],
                           kl=r["kl_to_sft"], kl_budget=r["kl_budget"], gold_candidate=r["gold_ppo"],
                           gold_baseline=r["gold_sft"], gold_diff_ci=r.get("gold_diff_ci"))
