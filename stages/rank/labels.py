"""Ranking labels of the rank stage: one record per person's ranking of a candidates.jsonl record.

The labels file itself (checking a ranking, the crash-safe append, reading the winning records back,
agreement between people) is data/labels.py, shared with the feedback store of `make serve` and `make chat`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from data.labels import stored_ranking


def label_record(candidate: dict, groups: list[list[int]], *, labeler: str, all_bad: bool = False) -> dict:
    """One rankings.jsonl line for a person's ranking of one candidates.jsonl record."""
    rec = {"prompt_id": candidate["prompt_id"]}
    for key in ("prompt", "messages"):
        if key in candidate:
            rec[key] = candidate[key]
    rec.update(responses=list(candidate["responses"]), ranking=stored_ranking(groups), labeler=labeler,
               labeler_kind="human", time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if all_bad:
        rec["all_bad"] = True
    if "policy" in candidate:  # which model wrote the answers: tells rounds of iterated RLHF apart
        rec["policy"] = candidate["policy"]
    return rec
