"""Rankings by people (rank.labeler=human): read back what the labeling page appended.

The page (stages/rank/human.py) appends one JSON line per submission to
runs/<name>/labels[-rN]/<labeler>.jsonl, a file the pipeline never deletes. Here the latest line per
(prompt, labeler) wins, a line whose answers are not this run's candidates is counted as stale
(it ranked another sample), and people who ranked the same prompt are compared (Kendall tau,
data/labels.py: the same reader and agreement the labeling page uses).
"""

from __future__ import annotations

from pathlib import Path

from data.formats import ranking_groups
from data.labels import agreement, read_labels


def human_rankings(candidates: list[dict], directory: Path) -> tuple[list[dict], dict]:
    """This run's rankings by people (one record per prompt and person) and counts for the report."""
    by_id = {c["prompt_id"]: c for c in candidates}
    latest, unreadable = [], 0
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        labels = read_labels(path)  # the latest record per (prompt, person) wins; torn lines are counted
        latest += labels.records
        unreadable += len(labels.bad_lines)
    out, stale = [], 0
    for rec in latest:
        cand = by_id.get(rec["prompt_id"])
        if cand is None or rec.get("responses") != cand["responses"]:
            stale += 1  # it ranked another sample of answers (an earlier round or policy)
            continue
        out.append({**rec, "labeler_kind": "human", "groups": ranking_groups(rec["ranking"])})
    out.sort(key=lambda r: (r["prompt_id"], r["labeler"]))
    ranked_ids = {r["prompt_id"] for r in out}
    counts = {"labels_read": len(latest), "stale_or_invalid": stale, "unreadable_lines": unreadable,
              "people": sorted({r["labeler"] for r in out}), "remaining": len(set(by_id) - ranked_ids),
              "agreement_tau": agreement(out), "all_bad": sum(bool(r.get("all_bad")) for r in out)}
    return out, counts
