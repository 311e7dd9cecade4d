"""The reward model on the policy's own answers to held-out prompts (written by the rank stage,
never trained on): pairwise accuracy against their gold ranking, and the Spearman correlation
between the reward and the gold metric over every answer -- the figure that says whether PPO,
which queries the reward model on exactly such answers, can improve gold -- and the best-of-n gold
win rate (best_of_n.py): how much gold choosing among those answers by this reward model wins."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data.gold import gold_score
from pipeline.artifacts.store import fingerprint, is_complete
from pipeline.errors import UserError, main_guard
from pipeline.judge.scoring import score_conversations
from pipeline.judge.stats import spearman
from stages.reward.best_of_n import PICKS, best_of_n
from stages.reward.dataset import RANK_SOURCE, data_parts
from stages.reward.heldout import evaluate_heldout, heldout_from_rankings
from stages.reward.report import _fmt, _win

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
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _split(cands: list[dict], flat: list[float]) -> list[list[float]]:
    """The flat per-answer list cut back into one list per candidates record."""
    out, start = [], 0
    for c in cands:
        out.append(flat[start:start + len(c["responses"])])
        start += len(c["responses"])
    if start != len(flat):
        raise ValueError(f"{len(flat)} values for {start} answers")
    return out


def _temperatures(c: dict) -> list[float] | None:
    t = c.get("temperatures")
    return t if isinstance(t, list) and len(t) == len(c["responses"]) else None


def evaluate_own_answers(model, tokenizer, sources: dict[str, Path], *, max_length: int | None,
                         batch_size: int) -> dict:
    """{name: {"policy", "rankings", "pairs", "accuracy", "kendall_tau", "answers", "spearman_gold",
    "best_of_n" (best_of_n.best_of_n's dict), its win rates as best_of_n_<pick> and best_of_n_gap_closed}}."""
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
            temps = [_temperatures(c) for c in cands]
            if (bon := best_of_n(_split(cands, rm), _split(cands, golds), temps)) is not None:
                # a temperature list that does not match the answers (a hand-made file): every answer
                # of that prompt takes a turn as the standing one, and the report says how many
                bon["temperatures_unusable"] = sum(t is None for t in temps)
                res["best_of_n"] = bon
                res.update({f"best_of_n_{k}": bon[k]["win_rate"] for k in PICKS})
                res["best_of_n_gap_closed"] = bon["gap_closed"]
        res["policy"] = cands[0].get("policy") if cands else None
        out[name] = res
    return out


@main_guard
def main(argv: list[str] | None = None) -> int:
    """Any reward model on any rank artifact's held-out own answers: to compare reward models on the
    same answers (the reward stage measures each on its own run's)."""
    from pipeline.judge.scoring import load_reward_model
    from pipeline.runtime.noise import quiet_weight_bars

    parser = argparse.ArgumentParser(prog="python -m stages.reward.own_answers", description=main.__doc__)
    parser.add_argument("reward_model", help="a reward artifact (runs/tiny/reward) or a reward model's directory")
    parser.add_argument("rank", help="a rank artifact's directory (runs/tiny/rank)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    rank = Path(args.rank)
    missing = [f for f in FILES if not (rank / f).is_file()]
    if missing:
        raise UserError(f"{rank}: no {' or '.join(missing)}; give a rank artifact's directory (make rank writes them)")
    quiet_weight_bars()  # one line of result, not the library's loading bar
    model, tokenizer, stats = load_reward_model(args.reward_model)
    m = evaluate_own_answers(model, tokenizer, {rank.name: rank}, max_length=stats.get("max_length"),
                             batch_size=args.batch_size)[rank.name]
    bon = m.get("best_of_n")
    print(f"{args.reward_model} on {rank} ({m.get('prompts', 0)} prompts, {m.get('answers', 0)} answers): "
          f"pairwise accuracy {_fmt(m.get('accuracy'))}, Spearman(RM, gold) {_fmt(m.get('spearman_gold'))}"
          + ("; best of n, gold win rate: " + ", ".join(
              f"{k.replace('_', ' ')} {_win(bon[k])}" for k in PICKS) + f", gap closed {_fmt(bon['gap_closed'])}" if bon else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
