"""Evaluation of a PPO policy on development prompts (never trained on).

Two things, for two moments:
  - while training, `SampleWriter`: every `ppo.sample_every` updates the same development prompts are answered
    with the trainer's own rollout machinery (its sampler, its reward function, PPO's normalisation, its
    reference for the KL) into samples.md and metrics.jsonl: a point of the over-optimisation curve
    (stages/ppo/curve.py: eval/score the proxy, eval/gold, win rates over SFT, eval/kl_k1 and k3 per answer
    and per token, the length), under a forked RNG so training is unchanged;
  - at the end, `development_report`: PPO against SFT by the judge every report uses (pipeline/judge),
    on the prompts the one rule chooses (data/report_prompts.py), with the quality-bar verdict.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from data.gold import gold_score
from data.report_prompts import ReportPrompts
from pipeline.artifacts.atomic import write_text
from pipeline.judge.answering import Sampling
from pipeline.judge.evaluate import RewardJudge, judge_pair
from pipeline.judge.overoptimisation import Curve
from stages.ppo.curve import kl_measures
from stages.ppo.rollout import RolloutBatch, encode_prompts, generate, left_pad


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


def texts(tokenizer, b: RolloutBatch) -> list[str]:
    return [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(b.response_ids, b.response_mask)]


def gold_scores(answers: list[str], golds: list[str | None]) -> list[float | None]:
    return [gold_score(a, g) if g else None for a, g in zip(answers, golds)]


class DemoGold:
    """The demo's gold metric as a held-out judge (score(prompts, answers, golds)): the curve's gold when the
    stage names no other judge."""

    name = "demo"

    def score(self, prompts, answers, golds):
        return gold_scores(answers, golds)


class SampleWriter:
    """Every few updates: answers to the same development prompts into samples.md, and a point of the curve."""

    def __init__(self, out_dir, tokenizer, prompts: list, golds: list | None, *, enabled: bool = True,
                 resume_step: int | None = None, seed: int = 1234, shown: int = 4, curve: Curve | None = None,
                 gold_judge=None):
        self.path = Path(out_dir) / "samples.md"
        self.enabled, self.seed, self.shown = enabled, seed, shown
        self.prompt_ids, _ = encode_prompts(tokenizer, prompts, 10**9)
        self.messages = list(prompts)
        self.prompts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        self.golds = golds or [None] * len(prompts)
        self.curve = curve if curve is not None else Curve()
        self.gold_judge = gold_judge or DemoGold()
        self.curve.judge = self.gold_judge.name
        if enabled:
            _drop_sections_after(self.path, resume_step)

    def write(self, step: int, trainer) -> dict:
        wrapped = trainer.acc.unwrap_model(trainer.model)
        fb = trainer.cfg.forward_batch_size
        b = answer(wrapped.policy, trainer.tok, self.prompt_ids, trainer.gen_config, fb, self.seed, trainer.acc.device)
        answers = texts(trainer.tok, b)
        trainer.score_rollout(b)  # log-probabilities under the policy and SFT, the reward model's scores
        # the proxy in PPO's units, before its clip and missing-EOS penalty (a programmatic reward as it is)
        scores = (b.raw_scores.float().cpu() - trainer.score_mean) / trainer.score_std
        length = b.response_mask.sum(1).float().mean().item()
        point = self.curve.add(step, proxy=scores.tolist(), gold=self.gold_judge.score(self.messages, answers, self.golds),
                               kl=kl_measures(b.logprobs, b.ref_logprobs, b.response_mask), length=length,
                               model=wrapped)
        metrics = {"eval/score": point["proxy"], "eval/response_length": length}
        metrics.update({f"eval/{k}": point[k] for k in ("gold", "win_rate_proxy", "win_rate_gold", "kl_k1", "kl_k3",
                                                         "kl_k1_token", "kl_k3_token") if point[k] is not None})
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


def development_report(policy, ref, reward_model, tokenizer, chosen: ReportPrompts, *, ppo_cfg, seed: int,
                       score_stats: tuple[float, float], reward_max_length: int | None, gold=None) -> dict:
    """PPO against SFT on the development prompts, by the judge: each model samples as PPO's rollouts do
    (ppo.temperature, top_k, top_p, max_new_tokens) under `seed`; RM scores in PPO's units (normalised by
    the reward statistics); a prompt listed several times is answered independently and counted once.
    `gold`: the held-out judge (judge.gold; data/held_out_judge.py), the demo's gold metric when None."""
    p = ppo_cfg
    sampling = Sampling(temperature=p.temperature, max_new_tokens=p.max_new_tokens, seed=seed,
                        batch_size=p.forward_batch_size, top_k=p.top_k, top_p=p.top_p, section="ppo")
    reward = RewardJudge(reward_model, tokenizer, reward_max_length, stats=score_stats, batch_size=p.forward_batch_size)
    comparison, _, _ = judge_pair(policy, ref, tokenizer, chosen.prompts, chosen.golds, sampling, names=("ppo", "sft"),
                                  reward=reward, gold=gold or gold_score, kl_budget=p.kl_budget)
    return {"split": chosen.split, "prompts_source": chosen.source, "answers_per_prompt": chosen.samples, **comparison}
