"""How `make compare` measures, with the judge every report uses (pipeline/judge): every model answers the
test prompts (the rule of data/report_prompts.py) with the eval section's sampling, so the numbers match
`make eval`'s; each method is then compared with SFT on the same prompts.

Under `accelerate launch` (make compare NPROC=2) the processes share the sampling as eval's do: each answers
whole batches of prompts, each prompt from its own seeded generator, and every process gets every answer; the
main process alone scores and compares. The report is the one a single process writes."""

from __future__ import annotations

from dataclasses import dataclass

from data.held_out_judge import held_out_judge
from data.report_prompts import report_prompts
from pipeline.judge.answering import Sampling, answer, load_chat_model, logprobs_under, release
from pipeline.judge.comparison import ModelAnswers, compare_answers, summarise
from pipeline.judge.evaluate import RewardJudge, reward_model_path, score_gold, score_rm
from pipeline.lm.model import model_dtype
from pipeline.runtime.processes import ONE, Processes

__all__ = ["Evaluated", "answer_each", "judge_all", "logprobs_under_baseline", "reward_model_path", "summarise_model",
           "versus_baseline"]


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


def answer_each(cfg, evaluated: list[Evaluated], device, dtype, processes: Processes = ONE) -> None:
    """Every model's answers to the test prompts, each answer's log-probabilities under its own model included
    (for the KL), shared out among the `processes`: every process ends with every answer."""
    chosen = report_prompts(cfg, "compare")
    for ev in evaluated:
        if processes.main:
            print(f"compare: {ev.name} ({ev.path}) answers {len(chosen.prompts)} prompts")
        model, tok = load_chat_model(ev.path, device, dtype)
        ev.answers = answer(model, tok, chosen.prompts, sampling(cfg), name=ev.name, show_progress=True,
                            processes=processes)
        del model
        release(device)


def judge_all(cfg, evaluated: list[Evaluated], device) -> tuple[list, str, list[str]]:
    """RM and gold scores of every answer (the main process's work). Returns (prompts, their source, what was
    skipped and why)."""
    chosen = report_prompts(cfg, "compare")
    skipped = []
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


def logprobs_under_baseline(cfg, baseline: Evaluated, methods: list[Evaluated], device,
                            processes: Processes = ONE) -> list[list[list[float]] | None]:
    """Each method's answers' log-probabilities under the baseline, for KL(method || baseline) (None where the
    vocabularies differ, or at temperature 0), shared out among the `processes`."""
    if cfg.eval.temperature <= 0:
        return [None] * len(methods)
    base_model, base_tok = load_chat_model(baseline.path, device, model_dtype(cfg.run.dtype, device))
    under = [logprobs_under(base_model, base_tok, ev.answers, sampling(cfg), processes)
             if ev.answers.vocab_key == baseline.answers.vocab_key else None for ev in methods]
    del base_model
    release(device)
    return under


def versus_baseline(cfg, baseline: Evaluated, methods: list[Evaluated], prompts: list, device,
                    under: list[list[list[float]] | None]) -> list[dict]:
    """For each method: win rates over the baseline (RM, gold, 95% intervals), KL(method || baseline)
    on the method's own answers (`under`: their log-probabilities under the baseline, from
    logprobs_under_baseline), the paired gold difference and the quality-bar verdict."""
    e = cfg.eval
    rows = []
    for ev, lp in zip(methods, under):
        c = compare_answers(ev.answers, baseline.answers, prompts, kl_budget=cfg.ppo.kl_budget,
                            under_baseline=lp, length_tolerance=e.length_tolerance)
        c.pop("kl_per_answer", None)
        c["summary"] = summarise_model(ev)
        rows.append(c)
    return rows


def summarise_model(ev: Evaluated) -> dict:
    return {"path": ev.path, "fingerprint": ev.record.get("fingerprint"), **summarise(ev.answers)}
