"""The thin layer between `make compare` and the evaluator: the only module here that reaches into
the eval stage. The comparison itself is the one evaluator the PPO stage and evaluation use
(pipeline/judge/comparison.py, through stages.eval.compare).

Every model answers the eval stage's held-out prompts with the eval section's sampling settings
(the numbers match `make eval`'s); each method is then compared with SFT on the same prompts."""

from __future__ import annotations

from pipeline.lm.generation import answer_logprobs
from pipeline.lm.model import load_causal_lm
from stages.eval.compare import Evaluated, compare, summarise_model
from stages.eval.stage import eval_prompts, reward_model_path, run_model, score_with_gold, score_with_rm

__all__ = ["Evaluated", "answer_all", "reward_model_path", "summarise_model", "versus_baseline"]


def answer_all(cfg, evaluated: list[Evaluated], device, dtype) -> tuple[list[dict], str, list[str]]:
    """Answers, RM scores and gold scores of every model on the held-out prompts.
    Returns (prompts, prompt source, what was skipped and why)."""
    prompts, source = eval_prompts(cfg)
    skipped = []
    for ev in evaluated:
        print(f"compare: {ev.name} ({ev.path}) answers {len(prompts)} prompts")
        run_model(ev, prompts, None, cfg, device, dtype, None)  # None: its own log-probs, for the KL
    rm_path, why = reward_model_path(cfg)
    if rm_path:
        score_with_rm(rm_path, evaluated, prompts, cfg.eval.batch_size, device)
    else:
        skipped.append(f"RM win rates and the quality bar: {why}")
    why = score_with_gold(evaluated, prompts)
    if why:
        skipped.append(why)
    return prompts, source, skipped


def versus_baseline(cfg, baseline: Evaluated, methods: list[Evaluated], prompts: list[dict],
                    device) -> list[dict]:
    """For each method: win rates over the baseline (RM, gold, 95% intervals), KL(method || baseline)
    on the method's own answers, the paired gold difference and the quality-bar verdict."""
    e = cfg.eval
    base_model = load_causal_lm(baseline.path).to(device).eval() if e.temperature > 0 else None
    rows = []
    for ev in methods:
        baseline.logprobs_of_candidate = None
        if base_model is not None and ev.vocab_key == baseline.vocab_key:
            baseline.logprobs_of_candidate = answer_logprobs(
                base_model, ev.prompt_ids, ev.answer_ids, pad_id=base_model.config.pad_token_id,
                temperature=e.temperature, batch_size=e.batch_size)
        c = compare(ev, baseline, prompts, tolerance=e.length_tolerance, kl_budget=cfg.ppo.kl_budget)
        c.pop("kl_per_answer", None)
        c["summary"] = summarise_model(ev)
        rows.append(c)
    baseline.logprobs_of_candidate = None
    return rows
