"""The reward model on the policy's own answers to held-out prompts (written by the rank stage,
never trained on): pairwise accuracy against their gold ranking, and the Spearman correlation
between the reward and the gold metric over every answer -- the figure that says whether PPO,
which queries the reward model on exactly such answers, can improve gold."""

from __future__ import annotations

import json
from pathlib import Path

from data.gold import gold_score
from pipeline.artifacts import fingerprint, is_complete
from pipeline.reward_scoring import score_conversations
from pipeline.stats import spearman
from stages.reward.dataset import RANK_SOURCE, data_parts
from stages.reward.heldout import evaluate_heldout, heldout_from_rankings

FILES = ("heldout_rankings.jsonl", "heldout_candidates.jsonl")


def own_answer_sources(cfg) -> dict[str, Path]:
    """{name: artifact dir} of the rank artifacts named in reward.data, or this run's round-1 rank
    artifact when none is (so a reward model trained on prepared data alone is measured the same way)."""
    names = [p for p in data_parts(cfg) if RANK_SOURCE.fullmatch(p)]
    if not names and is_complete(cfg.stage_dir("rank")):
        names = ["rank"]
    return {n: cfg.stage_dir(n) for n in names if all((cfg.stage_dir(n) / f).is_file() for f in FILES)}


def own_answer_inputs(sources: dict[str, Path]) -> dict:
    return {n: {f: fingerprint(d / f) for f in FILES} for n, d in sources.items()}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate_own_answers(model, tokenizer, sources: dict[str, Path], *, max_length: int, batch_size: int) -> dict:
    """{name: {"policy", "rankings", "pairs", "accuracy", "kendall_tau", "answers", "spearman_gold"}}."""
    from data.loaders import load_rankings

    out = {}
    for name, d in sources.items():
        res: dict = {}
        if (d / FILES[0]).stat().st_size:
            h = heldout_from_rankings(load_rankings(str(d / FILES[0])))
            metrics, _ = evaluate_heldout(model, tokenizer, h, max_length=max_length, batch_size=batch_size)
            res.update(rankings=len(h.rankings), pairs=metrics["pairs"], accuracy=metrics["accuracy"],
                       kendall_tau=metrics.get("kendall_tau"))
        cands = [c for c in _read_jsonl(d / FILES[1]) if c.get("gold") is not None]
        prompts, answers, golds = [], [], []
        for c in cands:
            msgs = c.get("messages") or [{"role": "user", "content": c["prompt"]}]
            for text in c["responses"]:
                prompts.append(msgs)
                answers.append(text)
                golds.append(gold_score(text, c["gold"]))
        if answers:
            rm = score_conversations(model, tokenizer, prompts, answers, batch_size=batch_size,
                                     max_length=max_length).tolist()
            res.update(answers=len(answers), prompts=len(cands), spearman_gold=spearman(rm, golds))
        res["policy"] = cands[0].get("policy") if cands else None
        out[name] = res
    return out
