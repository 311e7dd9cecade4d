"""Rankings by people (rank.labeler=human): read back what the labeling page appended.

The page (stages/rank/human.py) appends one JSON line per submission to
runs/<name>/labels[-rN]/<labeler>.jsonl, a file the pipeline never deletes. Here the latest line per
(prompt, labeler) wins, a line whose answers are not this run's candidates is counted as stale
(it ranked another sample), and people who ranked the same prompt are compared (Kendall tau).
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from data.formats import BadRecord, ranking_groups
from pipeline.stats import kendall_tau
from stages.rank.simulated import positions


def labels_dir(run_dir: Path, round_no: int) -> Path:
    return run_dir / ("labels" if round_no == 1 else f"labels-r{round_no}")


def latest_labels(directory: Path) -> tuple[dict[tuple[str, str], dict], int]:
    """{(prompt_id, labeler): latest ranking record} from every *.jsonl in `directory`, and the number
    of unreadable lines (a line cut by a crash mid-write)."""
    latest, unreadable = {}, 0
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                unreadable += 1
                continue
            if not isinstance(rec, dict) or "prompt_id" not in rec:
                unreadable += 1
                continue
            who = str(rec.get("labeler") or path.stem)
            if "ranking" in rec:  # skip events and the like rank nothing
                latest[(rec["prompt_id"], who)] = rec
    return latest, unreadable


def human_rankings(candidates: list[dict], directory: Path) -> tuple[list[dict], dict]:
    """This run's rankings by people (one record per prompt and person) and counts for the report."""
    by_id = {c["prompt_id"]: c for c in candidates}
    latest, unreadable = latest_labels(directory)
    out, stale = [], 0
    for (pid, who), rec in sorted(latest.items()):
        cand = by_id.get(pid)
        if cand is None or rec.get("responses") != cand["responses"]:
            stale += 1
            continue
        try:
            tiers = ranking_groups(rec["ranking"])
        except BadRecord:
            stale += 1
            continue
        out.append({**rec, "labeler": who, "labeler_kind": "human", "groups": tiers})
    ranked_ids = {r["prompt_id"] for r in out}
    counts = {"labels_read": len(latest), "stale_or_invalid": stale, "unreadable_lines": unreadable,
              "people": sorted({r["labeler"] for r in out}), "remaining": len(set(by_id) - ranked_ids),
              "agreement_tau": people_agreement(out), "all_bad": sum(bool(r.get("all_bad")) for r in out)}
    return out, counts


def people_agreement(rankings: list[dict]) -> dict:
    """Mean Kendall tau between two people's rankings of the same prompt, over prompts ranked by more
    than one person (every pair of people counts once per prompt)."""
    by_prompt: dict[str, list[dict]] = {}
    for r in rankings:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    taus = []
    for recs in by_prompt.values():
        n = len(recs[0]["responses"])
        for a, b in combinations(recs, 2):
            tau = kendall_tau([-p for p in positions(a["groups"], n)], [-p for p in positions(b["groups"], n)])
            if tau is not None:
                taus.append(tau)
    shared = sum(len(v) > 1 for v in by_prompt.values())
    return {"prompts_shared": shared, "pairs": len(taus), "mean": sum(taus) / len(taus) if taus else None}
