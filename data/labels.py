"""Ranking labels on disk, shared by the rank stage and the feedback store (data/feedback.py): check a
ranking, append a record safely, read the winning records back, measure agreement between people (Kendall's
tau-b and pairwise agreement).

A labels file is the whole state of a labeling session. Each submission is one JSON line appended under a
file lock and fsync'ed before the person is told "saved", so a closed browser or a killed server loses
nothing and a re-run resumes from the file. The latest record per (prompt_id, labeler) wins, which is what
makes "go back and re-rank" an append rather than an edit. The pipeline never rewrites or deletes the file.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from pipeline.judge.stats import kendall_tau as stats_kendall_tau
from pipeline.judge.stats import paired_difference


class BadRanking(ValueError):
    """The ranking is not an order of this prompt's answers (the message says what is wrong)."""


def ranking_groups(ranking, k: int) -> list[list[int]]:
    """Groups best first from a strict order [2, 0, 3, 1] or tied groups [[2], [0, 3], [1]].

    Every answer index 0..k-1 must appear exactly once; a repeated index is an error, not a tie."""
    if not isinstance(ranking, list) or not ranking:
        raise BadRanking("ranking must be a non-empty list of answer indices, best first, e.g. [2, 0, 3, 1] "
                         "or with ties [[2], [0, 3], [1]]")
    groups = []
    for entry in ranking:
        group = entry if isinstance(entry, list) else [entry]
        if not group:
            raise BadRanking("ranking has an empty tie group []")
        for i in group:
            if isinstance(i, bool) or not isinstance(i, int):
                raise BadRanking(f"ranking entries must be answer indices (integers), got {i!r}")
            if not 0 <= i < k:
                raise BadRanking(f"answer index {i} is out of range: this prompt has {k} answers (0..{k - 1})")
        groups.append(list(group))
    named = [i for g in groups for i in g]
    repeated = sorted({i for i in named if named.count(i) > 1})
    if repeated:
        raise BadRanking(f"answer {repeated[0]} appears more than once; a ranking names each answer once "
                         "(tie answers by grouping them, e.g. [[0, 3], [1], [2]])")
    if len(named) != k:
        missing = sorted(set(range(k)) - set(named))
        raise BadRanking(f"ranking orders {len(named)} answers but this prompt has {k} "
                         f"(missing: {', '.join(map(str, missing))})")
    return groups


# How a person types a ranking in a terminal (the rank stage's labeler, /alt in the terminal chat).
ORDER_HELP = "order best first (e.g. 2 1 3 4; 2 1=3 4 ties 1 and 3)"


def parse_order(text: str, k: int) -> list[list[int]]:
    """Groups of on-screen numbers (1-based) from "2 1=3 4"; a single missing number goes last."""
    groups = []
    for token in text.replace(",", " ").split():
        parts = token.split("=")
        if not all(p.isdigit() for p in parts):
            raise BadRanking(f"{token!r} is not an answer number; {ORDER_HELP}")
        groups.append([int(p) for p in parts])
    named = [n for g in groups for n in g]
    for n in named:
        if not 1 <= n <= k:
            raise BadRanking(f"there is no answer {n}; the answers are numbered 1 to {k}")
    if len(set(named)) != len(named):
        raise BadRanking("a number appears twice; name each answer once (tie them with =, e.g. 2 1=3 4)")
    missing = sorted(set(range(1, k + 1)) - set(named))
    if len(missing) == 1 and named:
        groups.append(missing)
    elif missing:
        raise BadRanking(f"answers {', '.join(map(str, missing))} are not ranked; name all {k} (or all but the last)")
    return groups


def format_order(groups: list[list[int]]) -> str:
    return " ".join("=".join(map(str, g)) for g in groups)


def stored_ranking(groups: list[list[int]]) -> list:
    """The contract's on-disk form: a flat list when nothing is tied, else the groups."""
    return [g[0] for g in groups] if all(len(g) == 1 for g in groups) else [list(g) for g in groups]


@contextmanager
def _locked(f):
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one labeler per file is still safe
        yield
        return
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)


def append_label(path: Path, record: dict) -> None:
    """Append one record as a JSON line, durable on return (flush + fsync), under an exclusive lock so
    several labelers (processes) can share one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    with open(path, "a+b") as f, _locked(f):
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line torn by a kill mid-write: never glue the new record onto it
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    if created and hasattr(os, "O_DIRECTORY"):  # make the new file's directory entry durable too
        fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Labels:
    records: list[dict] = field(default_factory=list)  # the winning record per (prompt_id, labeler), oldest first
    bad_lines: list[int] = field(default_factory=list)  # 1-based line numbers that are no valid ranking record


def _valid(rec) -> bool:
    if not isinstance(rec, dict) or not isinstance(rec.get("prompt_id"), str):
        return False
    if not isinstance(rec.get("labeler"), str) or not isinstance(rec.get("responses"), list):
        return False
    try:
        ranking_groups(rec.get("ranking"), len(rec["responses"]))
    except BadRanking:
        return False
    return True


def json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based line number, the line's JSON or None when it does not parse) for each non-blank line; a
    missing file has none."""
    if not Path(path).exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except ValueError:
                yield n, None


def read_labels(path: Path) -> Labels:
    """The latest record per (prompt_id, labeler), in the order they were last submitted; lines that are not
    a valid ranking record (e.g. torn by a kill mid-write) are skipped and their line numbers counted."""
    path = Path(path)
    latest: dict[tuple[str, str], dict] = {}
    bad = []
    for n, rec in json_lines(path):
        if isinstance(rec, dict) and isinstance(rec.get("prompt_id"), str) and "ranking" not in rec:
            continue  # an event that ranks nothing (a skip), not a broken line
        if not _valid(rec):
            bad.append(n)
            continue
        key = (rec["prompt_id"], rec["labeler"])
        latest.pop(key, None)  # re-insert so dict order is the order of last submission
        latest[key] = rec
    return Labels(records=list(latest.values()), bad_lines=bad)


def kendall_tau(groups_a: list[list[int]], groups_b: list[list[int]]) -> float | None:
    """Kendall's tau-b between two rankings of the same answers (ties allowed); None when either ranks
    everything equal, where agreement is undefined."""
    place_a = {i: p for p, g in enumerate(groups_a) for i in g}
    place_b = {i: p for p, g in enumerate(groups_b) for i in g}
    answers = sorted(place_a)
    return stats_kendall_tau([-place_a[i] for i in answers], [-place_b[i] for i in answers])


def pair_agreement(groups_a: list[list[int]], groups_b: list[list[int]]) -> float:
    """The fraction of answer pairs two rankings of the same answers order the same way, ties counted as
    stated: a pair both tie agrees, a pair one ties and the other orders disagrees. Defined even where
    Kendall's tau is not (a ranking that ties everything)."""
    place_a = {i: p for p, g in enumerate(groups_a) for i in g}
    place_b = {i: p for p, g in enumerate(groups_b) for i in g}

    def side(place, i, j):
        return (place[i] > place[j]) - (place[i] < place[j])

    pairs = list(combinations(sorted(place_a), 2))
    return sum(side(place_a, i, j) == side(place_b, i, j) for i, j in pairs) / len(pairs)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def agreement(records: list[dict]) -> dict:
    """How much labelers agree on prompts ranked by more than one of them (the same answers): Kendall's tau-b
    and pairwise agreement (pair_agreement) per pair of labelers, averaged per prompt, then over prompts
    (prompts are the independent units). `prompts` counts the prompts with a tau; `pair_prompts` those with a
    pairwise agreement (also those where a ranking ties everything, where tau is undefined)."""
    by_prompt = defaultdict(list)
    for rec in records:
        by_prompt[(rec["prompt_id"], tuple(rec["responses"]))].append(rec)
    per_prompt, per_prompt_pairs = [], []
    per_pair: dict[str, dict[str, list]] = defaultdict(lambda: {"tau": [], "pairs": []})
    for recs in by_prompt.values():
        taus, fractions = [], []
        for a, b in combinations(sorted(recs, key=lambda r: r["labeler"]), 2):
            k = len(a["responses"])
            ga, gb = ranking_groups(a["ranking"], k), ranking_groups(b["ranking"], k)
            both = per_pair[f"{a['labeler']}~{b['labeler']}"]
            fractions.append(pair_agreement(ga, gb))
            both["pairs"].append(fractions[-1])
            tau = kendall_tau(ga, gb)
            if tau is not None:
                taus.append(tau)
                both["tau"].append(tau)
        if taus:
            per_prompt.append(sum(taus) / len(taus))
        if fractions:
            per_prompt_pairs.append(sum(fractions) / len(fractions))
    # a one-sample interval is the paired difference from 0: the same t interval, the same code
    summary = paired_difference(per_prompt, [0.0] * len(per_prompt))
    one = len(per_prompt) < 2  # an interval from one prompt would claim a spread nobody measured
    return {"prompts": len(per_prompt), "mean_tau": summary["mean"],
            "ci_low": None if one else summary["ci_low"], "ci_high": None if one else summary["ci_high"],
            "pair_prompts": len(per_prompt_pairs), "pair_agreement": _mean(per_prompt_pairs),
            "by_pair": {pair: {"prompts": len(v["tau"]), "mean_tau": _mean(v["tau"]),
                               "pair_agreement": _mean(v["pairs"])} for pair, v in sorted(per_pair.items())}}
