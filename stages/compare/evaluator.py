"""How `make compare` measures, with the judge every report uses (pipeline/judge): every model answers the
test prompts (the rule of data/report_prompts.py) with the eval section's sampling, so the numbers match
`make eval`'s; each method is then compared with SFT on the same prompts."""

from __future__ import annotations

from dataclasses import dataclass

from data.held_out_judge import held_out_judge
from data.report_prompts import report_prompts
from pipeline.judge.answering import Sampling, answer, load_chat_model, logprobs_under, release
from pipeline.judge.comparison import ModelAnswers, compare_answers, summarise
from pipeline.judge.evaluate import RewardJudge, reward_model_path, score_gold, score_rm
from pipeline.lm.model import model_dtype

__all__ = ["Evaluated", "answer_all", "reward_model_path", "summarise_model", "versus_baseline"]


@dataclass
class Evaluated:
    """One model of the comparison: where it came from and its answers."""

    name: str
    path: str
    record: dict
    answers: ModelAnswers | None = None


def sampling(cfg) -> Sampling:
    e = cfg.eval
    return Sampling(temperature=e.temperature, max_new_tokens=e.max_new_tokens, seed=e.seed,
                    batch_size=e.batch_size, top_k=e.top_k, top_p=e.top_p, section="eval")


def answer_all(cfg, evaluated: list[Evaluated], device, dtype) -> tuple[list, str, list[str]]:
    """Answers, RM scores and gold scores of every model on the test prompts, each answer's log-probabilities
    under its own model included (for the KL). Returns (prompts, their source, what was skipped and why)."""
    chosen = report_prompts(cfg, "compare")
    skipped = []
    for ev in evaluated:
        print(f"compare: {ev.name} ({ev.path}) answers {len(chosen.prompts)} prompts")
        model, tok = load_chat_model(ev.path, device, dtype)
        ev.answers = answer(model, tok, chosen.prompts, sampling(cfg), name=ev.name, show_progress=True)
        del model
        release(device)
    answered = [ev.answers for ev in evaluated]
    rm_path, why = reward_model_path(cfg)
    if rm_path:
        score_rm(RewardJudge.load(rm_path, device, batch_size=cfg.eval.batch_size), answered, chosen.prompts)
        release(device)
    else:
        skipped.append(f"RM win rates and the quality bar: {why}")
    gold = held_out_judge(cfg, device, batch_size=cfg.eval.batch_size)
    why = score_gold(answered, chosen.golds, gold, chosen.prompts)
    if why:
        skipped.append(why)
    return chosen.prompts, chosen.source, skipped


def versus_baseline(cfg, baseline: Evaluated, methods: list[Evaluated], prompts: list, device) -> list[dict]:
    """For each method: win rates over the baseline (RM, gold, 95% intervals), KL(method || baseline)
    on the method's own answers, the paired gold difference and the quality-bar verdict."""
    e = cfg.eval
    base_model, base_tok = (load_chat_model(baseline.path, device, model_dtype(cfg.run.dtype, device))
                            if e.temperature > 0 else (None, None))
    rows = []
    for ev in methods:
        under = None
        if base_model is not None and ev.answers.vocab_key == baseline.answers.vocab_key:
            under = logprobs_under(base_model, base_tok, ev.answers, sampling(cfg))
        c = compare_answers(ev.answers, baseline.answers, prompts, kl_budget=cfg.ppo.kl_budget,
                            under_baseline=under, length_tolerance=e.length_tolerance)
        c.pop("kl_per_answer", None)
        c["summary"] = summarise_model(ev)
        rows.append(c)
    return rows


def summarise_model(ev: Evaluated) -> dict:
    return {"path": ev.path, "fingerprint": ev.record.get("fingerprint"), **summarise(ev.answers)}
