"""The judge: generate -> score -> compare, the one way every report measures a tuned model against its
baseline: PPO's development report, the DPO/GRPO/RLOO report, evaluation and compare.

  generate  pipeline/judge/answering.py   seeded sampling of each model's answers (`answer`);
  score     `RewardJudge`                 the reward model reads each (prompt, answer text) as the reward
                                          stage trained it (pipeline/judge/scoring.py), raw or normalised by
                                          the reward statistics (PPO's units);
            `score_gold`                  the held-out judge (`judge.gold`, pipeline/judge/gold.py: the demo's
                                          gold metric, a second reward model, held-out rankings or a judge
                                          model), built by the stage (data/held_out_judge.py);
  compare   pipeline/judge/comparison.py  win rates with intervals, paired gold difference, KL, lengths and
                                          the verdict of pipeline/judge/quality_bar.py.

The prompts come from one rule too (data/report_prompts.py). A stage holding both models in memory
calls `judge_pair`; eval and compare, which load one model at a time (and may meet models with other
tokenizers), call the same steps themselves.

The reward model scores answer *text*, re-encoded with its own tokenizer and chat template: so a reward
model judges any model's answers, whatever that model's tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.judge.answering import Sampling, answer, logprobs_under
from pipeline.judge.comparison import ModelAnswers, compare_answers
from pipeline.judge.gold import GoldJudge, MetricGold

GoldMetric = Callable[[str, str], float]  # (answer, gold answer) -> score; data.gold.gold_score by default


@dataclass
class RewardJudge:
    """The reward model as a judge of answers. `stats` (mean, std): scores are normalised as PPO's rewards
    are (a report in the units training optimised); None: raw scores."""

    model: object
    tokenizer: object
    max_length: int | None = None  # the reward model's training length; longer conversations keep their end
    stats: tuple[float, float] | None = None
    batch_size: int = 32

    @classmethod
    def load(cls, path: str, device, *, batch_size: int = 32, stats: tuple[float, float] | None = None):
        from pipeline.judge.scoring import load_reward_model

        model, tokenizer, info = load_reward_model(path, device=device)
        return cls(model, tokenizer, info.get("max_length"), stats, batch_size)

    def score(self, prompts: Sequence, answers: ModelAnswers) -> list[float]:
        from pipeline.judge.scoring import score_conversations

        scores = score_conversations(self.model, self.tokenizer, list(prompts), answers.answers,
                                     batch_size=self.batch_size, max_length=self.max_length)
        if self.stats is not None:
            mean, std = self.stats
            scores = (scores - mean) / std
        return scores.tolist()


def reward_max_length(path: str) -> int | None:
    """The length a reward artifact was trained on (None for a foreign reward model)."""
    from pipeline.judge.scoring import TRAINING_FILE

    f = Path(path) / TRAINING_FILE
    return json.loads(f.read_text()).get("max_length") if f.is_file() else None


def score_rm(reward: RewardJudge, answered: list[ModelAnswers], prompts: Sequence) -> None:
    for a in answered:
        a.rm_scores = reward.score(prompts, a)


def score_gold(answered: list[ModelAnswers], golds: Sequence[str | None], gold: GoldJudge | GoldMetric | None,
               prompts: Sequence | None = None) -> str:
    """The held-out judge's scores of every answer (pipeline/judge/gold.py; a bare metric is the demo's
    kind): '' on success, else why there are none (a paired difference needs a score for every prompt)."""
    if gold is None:
        return "gold metric: none given"
    judge = gold if hasattr(gold, "score") else MetricGold(gold)
    if judge.name == "demo" and not all(golds):
        missing = sum(1 for g in golds if not g)
        return f"gold metric: {missing} of {len(golds)} prompts have no gold answer"
    scored = [judge.score(prompts if prompts is not None else [""] * len(golds), a.answers, golds) for a in answered]
    unjudged = max((sum(s is None for s in scores) for scores in scored), default=0)
    if unjudged:
        return f"gold ({judge.name}): {unjudged} of {len(golds)} answers have nothing to be judged by (no matching prompt)"
    for a, scores in zip(answered, scored):
        a.gold_scores = [float(s) for s in scores]
    return ""


def gold_name(gold: GoldJudge | GoldMetric | None) -> str | None:
    """How a report names the held-out judge behind its gold numbers."""
    return None if gold is None else getattr(gold, "name", "demo")


def judge_pair(candidate_model, baseline_model, tokenizer, prompts: Sequence, golds: Sequence[str | None],
               sampling: Sampling, *, names: tuple[str, str], reward: RewardJudge | None, gold: GoldJudge | GoldMetric | None,
               kl_budget: float, length_tolerance: float = 0.2) -> tuple[dict, ModelAnswers, ModelAnswers]:
    """Candidate against baseline, both loaded and sharing `tokenizer`: (the comparison, the candidate's
    answers, the baseline's answers)."""
    cand = answer(candidate_model, tokenizer, prompts, sampling, name=names[0])
    base = answer(baseline_model, tokenizer, prompts, sampling, name=names[1], logprobs=False)
    under_baseline = logprobs_under(baseline_model, tokenizer, cand, sampling)
    if reward is not None:
        score_rm(reward, [cand, base], prompts)
    why = score_gold([cand, base], golds, gold, prompts)
    comparison = compare_answers(cand, base, prompts, kl_budget=kl_budget, under_baseline=under_baseline,
                                 length_tolerance=length_tolerance)
    comparison["gold_judge"] = gold_name(gold)
    if why:
        comparison["gold_skipped"] = why
    return comparison, cand, base


def reward_model_path(cfg) -> tuple[str | None, str]:
    """The reward model eval and compare judge with (eval.reward_model, else the newest finished round's:
    the one the evaluated PPO model was trained against), or None and why not."""
    from pipeline.artifacts.store import is_complete, resolve_model_source
    from pipeline.graph.rounds import last_finished_round, make_command, newest_artifact

    value = cfg.eval.reward_model
    if value and value.lower() == "none":
        return None, "eval.reward_model=none"
    if value:
        source, _ = resolve_model_source(value, Path(value), "make reward")
        return source, ""
    default = newest_artifact(cfg, "reward")
    if is_complete(default):
        return str(default), ""
    command = make_command("reward", last_finished_round(cfg))
    return None, f"no reward model: {default} does not exist (run `{command}`, or set eval.reward_model=DIR)"
