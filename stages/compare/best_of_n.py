"""Best of n as a method beside PPO, DPO, GRPO and RLOO (`compare.best_of_n` = n): SFT samples n answers to each
test prompt, the reward model keeps its favourite. No training at all: the baseline every RL method must beat
at its KL (Gao et al. 2023; Stiennon et al. 2020).

Its KL to SFT is not estimated from samples: it is the analytic log n - (n-1)/n, the value for a choice
among n independent samples without ties, and an upper bound on the true KL otherwise (Beirami et al. 2024,
"Theoretical guarantees on the best-of-n alignment policy"). Its RM win rate is judged by the model that
chose, so it says little; its gold win rate, by the held-out judge, is the number to read.

The candidates are sampled with the eval section's settings under seed eval.seed + 1, so they are
independent of the SFT answers they are compared with (seed eval.seed).
"""

from __future__ import annotations

import math
import time

from data.held_out_judge import held_out_judge
from data.report_prompts import report_prompts
from pipeline.judge.answering import Sampling, answer, load_chat_model, release
from pipeline.judge.comparison import ModelAnswers, compare_models, summarise
from pipeline.judge.evaluate import RewardJudge, score_gold
from pipeline.runtime.processes import ONE, Processes


def analytic_kl(n: int) -> float:
    """KL(best of n || the sampler) = log n - (n - 1) / n (exact without ties, an upper bound with them)."""
    return math.log(n) - (n - 1) / n


def choose(scores: list[float], n: int) -> list[int]:
    """For answers laid out as n rounds over the prompts (answer j of prompt i at j * prompts + i), the
    index of each prompt's highest-scoring answer (the first of equal scores)."""
    prompts = len(scores) // n
    return [max((j * prompts + i for j in range(n)), key=lambda k: scores[k]) for i in range(prompts)]


def sample_pool(cfg, sft_path: str, device, dtype, processes: Processes = ONE) -> tuple[ModelAnswers, float]:
    """SFT's n answers to each compare prompt (answer j of prompt i at j * prompts + i), shared out among the
    `processes` as every model's answers are; and the seconds it took."""
    n, e = cfg.compare.best_of_n, cfg.eval
    prompts = report_prompts(cfg, "compare").prompts
    start = time.perf_counter()
    model, tok = load_chat_model(sft_path, device, dtype)
    sampling = Sampling(temperature=e.temperature, max_new_tokens=e.max_new_tokens, seed=e.seed + 1,
                        batch_size=e.batch_size, top_k=e.top_k, top_p=e.top_p, section="compare")
    if processes.main:
        print(f"compare: best of {n}: sft answers {len(prompts)} prompts {n} times")
    pool = answer(model, tok, list(prompts) * n, sampling, name=f"best-of-{n}", show_progress=True, logprobs=False,
                  processes=processes)
    del model
    release(device)
    return pool, time.perf_counter() - start


def best_of_n_row(cfg, sft_path: str, sft_answers: ModelAnswers, rm_path: str | None, device, dtype,
                  pool: tuple[ModelAnswers, float] | None) -> tuple[dict | None, str]:
    """Best of n against SFT's own answers on the compare prompts, as a method's row of the report (KL
    analytic, cost: the sampling and scoring time); (None, why) when it cannot be measured. `pool`: SFT's n
    answers per prompt and their sampling time, from sample_pool (None without a reward model)."""
    n, e = cfg.compare.best_of_n, cfg.eval
    if rm_path is None:
        return None, f"best of {n}: no reward model to choose with"
    chosen = report_prompts(cfg, "compare")
    prompts = chosen.prompts
    pool, sampling_s = pool
    start = time.perf_counter()
    reward = RewardJudge.load(rm_path, device, batch_size=e.batch_size)
    scores = reward.score(list(prompts) * n, pool)
    del reward
    release(device)
    picks = choose(scores, n)
    best = ModelAnswers(f"best-of-{n}", [pool.answers[k] for k in picks], rm_scores=[scores[k] for k in picks],
                        answer_ids=[pool.answer_ids[k] for k in picks], ended=[pool.ended[k] for k in picks])
    seconds = sampling_s + time.perf_counter() - start
    # the held-out judge scores both again (SFT's answers were scored in judge_all by the same judge)
    why = score_gold([best, sft_answers], chosen.golds, held_out_judge(cfg, device, batch_size=e.batch_size), prompts)
    row = compare_models(best, sft_answers, prompts, kl_budget=cfg.ppo.kl_budget, length_tolerance=e.length_tolerance,
                         kl_analytic=(analytic_kl(n), "log n - (n-1)/n: the analytic value, an upper bound"))
    row["summary"] = {"path": f"{sft_path} (best of {n} by {rm_path})", **summarise(best)}
    row["cost"] = {"wall_time_s": seconds, "used": f"{n} SFT answers per prompt, no training"}
    row["best_of_n"] = n
    return row, why
