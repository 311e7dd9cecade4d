"""A round's rankings from feedback (rank.feedback_from_round=N): instead of sampling answers for a labeler,
round N's rank artifact is what people ranked in `make serve` / `make chat` (data/feedback.py's store,
runs/<name>/feedback) of the model that round starts from -- SFT in round 1, round N-1's PPO model after.

Which rankings: those whose every answer carries that model's fingerprint (the store records it per
answer). A ranking of another model's answers -- an older round's, or two models compared side by side --
is left out and counted: the round's reward model is meant to learn from answers where the policy now is,
which is the point of a later round. Ratings (good/bad) are not rankings and are left out too (they
train the reward model when reward.data names feedback). The store's held-out conversations (data/feedback.py:
a fixed fifth once the store holds HELDOUT_MIN_RANKINGS rankings) stay out of rankings.jsonl: they go to
heldout_rankings.jsonl, never trained on, as the reward stage's report expects of held-out rankings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data.feedback import HELDOUT_MIN_RANKINGS, STORE_FILE, is_heldout, people_agreement, read_store
from data.labels import ranking_groups
from pipeline.errors import UserError

MIN_RANKINGS = 20  # rankings with a preference a round needs: fewer would train a reward model on noise


@dataclass
class FromFeedback:
    """The store's rankings of one model's answers, split as the round uses them, and what was left out."""

    rankings: list[dict] = field(default_factory=list)  # trained on: K-way records with "groups"
    heldout: list[dict] = field(default_factory=list)  # the held-out conversations' rankings, never trained on
    counts: dict = field(default_factory=dict)


def _about(rec: dict, fingerprint: str) -> bool:
    answers = rec.get("answers")
    return (isinstance(answers, list) and len(answers) == len(rec["responses"])
            and all(isinstance(a, dict) and a.get("model_fingerprint") == fingerprint for a in answers))


def select(store: Path, fingerprint: str | None) -> FromFeedback:
    """The rankings in `store` of the model with this fingerprint (every answer its own)."""
    stored = read_store(store)
    about = [r for r in stored.rankings if fingerprint and _about(r, fingerprint)]
    enough = len(stored.rankings) >= HELDOUT_MIN_RANKINGS  # the split data/feedback.py makes of the whole store
    out = FromFeedback()
    all_tied = 0
    for rec in about:
        groups = ranking_groups(rec["ranking"], len(rec["responses"]))
        if len(groups) < 2:
            all_tied += 1  # prefers nothing: no pair, as the rank stage drops its all-tied rankings
            continue
        x = {"prompt_id": rec["prompt_id"], "prompt": rec["prompt"], "responses": rec["responses"], "groups": groups,
             "labeler": rec["labeler"], "labeler_kind": rec.get("labeler_kind", "human"), "time": rec.get("time"),
             "all_bad": rec.get("all_bad", False)}
        (out.heldout if enough and is_heldout(rec["prompt_id"]) else out.rankings).append(x)
    out.counts = {"store_rankings": len(stored.rankings), "other_models": len(stored.rankings) - len(about),
                  "all_tied": all_tied, "heldout": len(out.heldout), "unreadable_lines": len(stored.unreadable_lines),
                  "ratings_left_out": len(stored.ratings), "agreement": people_agreement(about)}
    return out


def require_enough(found: FromFeedback, store: Path, policy: str, round_no: int) -> None:
    """One line when the round has too few rankings to train on, saying what the store holds instead."""
    n, c = len(found.rankings), found.counts
    if n >= MIN_RANKINGS:
        return
    raise UserError(
        f"round {round_no} takes its rankings from feedback (rank.feedback_from_round) but {store / STORE_FILE} holds "
        f"{n} rankings of {policy}'s answers to train on, fewer than {MIN_RANKINGS} ({c['store_rankings']} rankings "
        f"in all: {c['other_models']} of other models' answers, {c['all_tied']} all tied, {c['heldout']} held out); "
        f"serve that model (make serve MODEL={policy}) and rank more of its answers, or unset rank.feedback_from_round.")


def candidates(found: FromFeedback, policy: str) -> list[dict]:
    """candidates.jsonl: each distinct set of answers to a conversation once (several people may rank it)."""
    seen, out = set(), []
    for x in found.rankings:
        key = (x["prompt_id"], tuple(x["responses"]))
        if key not in seen:
            seen.add(key)
            out.append({"prompt_id": x["prompt_id"], "prompt": x["prompt"], "responses": x["responses"],
                        "policy": policy})
    return out
