"""The preference store: what people think of the answers they get where they use the model -- the
chat page and POST /v1/feedback of `make serve` (apps/serve/feedback.py), /alt, /good and /bad of
`make chat` -- kept for the reward stage (reward.data=demo+rank+feedback).

Where: <run>/feedback/feedback.jsonl, <run> being the run folder the model came from (runs/tiny for
runs/tiny/ppo, runs/tiny/ppo-r2, runs/tiny/sft); `--feedback-dir DIR` puts it elsewhere, `--no-feedback`
stores nothing. A model that is no run's artifact has no default: feedback is off until --feedback-dir
names a folder. No make target deletes the store (pipeline/chain/clean.py keeps it, as it keeps labels/).

One JSON line per submission, appended under a file lock and fsync'ed before the person is told it is
stored (data/labels.py, the rank stage's own append): a line torn by a kill mid-write is skipped and
counted when the store is read; the pipeline never rewrites the file. Two kinds of record:
  ranking  the rank stage's K-way record -- prompt_id, prompt (the conversation's messages), responses,
           ranking (best first; tied answers in one group), labeler ("NAME@serve" or "NAME@chat"),
           labeler_kind "human", time -- plus kind, id, answers (per response: the completion id and
           choice index it came from, the model, its fingerprint, the sampling settings), reason, all_bad
  rating   the same fields with one answer in responses and good: true|false instead of a ranking
prompt_id is a hash of the conversation, so two people's rankings of the same answers are compared
(Kendall tau, as the rank stage compares people) and answers to one conversation meet as pairs.

As training data (reward.data=...+feedback): a ranking gives the rank stage's pairs (a better tier
against every worse one; tied answers form none). Ratings: within one conversation every answer rated
good is paired with every answer rated bad (the latest rating of an answer counts); a rating with no
opposite rating in its conversation makes no pair -- it is counted, never paired with an answer
nobody judged. With at least HELDOUT_MIN_RANKINGS rankings, the conversations whose id falls in the
held-out fifth are never trained on: the reward stage reports its accuracy on them. The split hangs on
the conversation alone, so it stays put as feedback grows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from data.formats import Drop
from data.formats import pairs as ranking_pairs
from data.labels import BadRanking, agreement, append_label, json_lines, ranking_groups, stored_ranking
from pipeline.errors import UserError

DIR_NAME = "feedback"
STORE_FILE = "feedback.jsonl"
HELDOUT_MIN_RANKINGS = 50  # below this a held-out slice would be too small to say anything
HELDOUT_EVERY = 5  # one conversation in five is held out
LABELER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a person's name as stored: NAME@serve, NAME@chat


def run_store_dir(model_dir: str | Path) -> Path | None:
    """<run>/feedback when `model_dir` is an artifact of a run (its manifest names a stage), else None."""
    from pipeline.artifacts.store import read_manifest

    manifest = read_manifest(model_dir)
    if not manifest or not manifest.get("stage"):
        return None
    return Path(model_dir).resolve().parent / DIR_NAME


def store_dir(model_dir: str, feedback_dir: str | None, off: bool) -> tuple[Path | None, str]:
    """(where feedback goes, or None; one line saying so) from --feedback-dir and --no-feedback."""
    if off:
        return None, "feedback: off (--no-feedback)"
    if feedback_dir:
        d = Path(feedback_dir)
        if d.exists() and not d.is_dir():
            raise UserError(f"--feedback-dir {d} is a file; give a folder (the store is {STORE_FILE} in it).")
        return _writable(d), f"feedback: stored in {d / STORE_FILE}"
    d = run_store_dir(model_dir)
    if d is None:
        return None, (f"feedback: off ({model_dir} is no run's artifact, so there is no run folder to keep it "
                      "in; --feedback-dir DIR records it)")
    return _writable(d), f"feedback: stored in {d / STORE_FILE} (--feedback-dir DIR elsewhere, --no-feedback off)"


def _writable(d: Path) -> Path:
    """`d`, created; refused in one line at start when it cannot be written (not at the first submission)."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the feedback folder {d} ({e.strerror}); give another with --feedback-dir "
                        "DIR, or --no-feedback.") from None
    if not os.access(d, os.W_OK):
        raise UserError(f"the feedback folder {d} is not writable; give another with --feedback-dir DIR, or "
                        "--no-feedback.")
    return d


def model_fingerprint(model_dir: str | Path) -> str | None:
    """A run artifact's manifest fingerprint; any other folder is hashed (once, when it is loaded)."""
    from pipeline.artifacts.store import fingerprint, read_manifest

    manifest = read_manifest(model_dir) or {}
    if manifest.get("fingerprint"):
        return manifest["fingerprint"]
    return fingerprint(model_dir) if Path(model_dir).is_dir() else None


def conversation_id(messages: list[dict]) -> str:
    """The same conversation (roles and texts) gets the same id, wherever and whenever it was asked."""
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return "conv-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _base(kind: str, messages: list[dict], answers: list[dict], labeler: str, reason: str | None) -> dict:
    """The fields both kinds share; `answers`: per answer its "text" and where it came from."""
    rec = {"kind": kind, "id": "fb-" + uuid.uuid4().hex[:24], "prompt_id": conversation_id(messages),
           "prompt": [{"role": m["role"], "content": m["content"]} for m in messages],
           "responses": [a["text"] for a in answers], "labeler": labeler, "labeler_kind": "human", "time": _now(),
           "answers": [{k: v for k, v in a.items() if k != "text"} for a in answers]}
    if reason:
        rec["reason"] = reason
    return rec


def ranking_record(messages: list[dict], answers: list[dict], groups: list[list[int]], *, labeler: str,
                   reason: str | None = None, all_bad: bool = False) -> dict:
    """A person's ranking of answers to one conversation: groups of indices into `answers`, best first."""
    ranking_groups(groups, len(answers))  # a bad order is a BadRanking here, never a bad line in the store
    rec = _base("ranking", messages, answers, labeler, reason)
    rec["ranking"] = stored_ranking(groups)
    if all_bad:
        rec["all_bad"] = True
    return rec


def rating_record(messages: list[dict], answer: dict, good: bool, *, labeler: str, reason: str | None = None) -> dict:
    rec = _base("rating", messages, [answer], labeler, reason)
    rec["good"] = bool(good)
    return rec


class FeedbackStore:
    """Appends records to <directory>/feedback.jsonl; safe for several processes (a lock per append)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / STORE_FILE

    def append(self, record: dict) -> str:
        """Durable on return (flush + fsync under the lock); the record's id."""
        append_label(self.path, record)
        return record["id"]


@dataclass
class Stored:
    """What a store holds, latest submissions only."""

    rankings: list[dict] = field(default_factory=list)  # the latest per (conversation, answers, person)
    ratings: list[dict] = field(default_factory=list)  # the latest per (conversation, answer, person)
    unreadable_lines: list[int] = field(default_factory=list)  # torn by a kill, or not a feedback record


def _ranking_ok(rec: dict) -> bool:
    try:
        ranking_groups(rec.get("ranking"), len(rec["responses"]))
    except BadRanking:
        return False
    return True


def _valid(rec) -> bool:
    if not isinstance(rec, dict) or rec.get("kind") not in ("ranking", "rating"):
        return False
    if not isinstance(rec.get("prompt_id"), str) or not isinstance(rec.get("labeler"), str):
        return False
    prompt, responses = rec.get("prompt"), rec.get("responses")
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        return False
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        return False
    if rec["kind"] == "rating":
        return len(responses) == 1 and isinstance(rec.get("good"), bool)
    return len(responses) >= 2 and _ranking_ok(rec)


def read_store(directory: str | Path) -> Stored:
    """Every valid record's latest version, in the order of last submission; unreadable lines counted."""
    path = Path(directory) / STORE_FILE
    rankings: dict[tuple, dict] = {}
    ratings: dict[tuple, dict] = {}
    out = Stored()
    for n, rec in json_lines(path):
        if not _valid(rec):
            out.unreadable_lines.append(n)
            continue
        if rec["kind"] == "ranking":
            key, table = (rec["prompt_id"], tuple(sorted(rec["responses"])), rec["labeler"]), rankings
        else:
            key, table = (rec["prompt_id"], rec["responses"][0], rec["labeler"]), ratings
        table.pop(key, None)  # re-insert: dict order is the order of last submission
        table[key] = rec
    out.rankings, out.ratings = list(rankings.values()), list(ratings.values())
    return out


def rating_rankings(ratings: list[dict]) -> tuple[list[dict], dict]:
    """Good-against-bad rankings, one per conversation that has both, and counts of what made none."""
    verdict: dict[str, dict[str, bool]] = defaultdict(dict)  # conversation -> answer -> good
    prompts = {}
    for rec in sorted(ratings, key=lambda r: r.get("time", "")):
        verdict[rec["prompt_id"]][rec["responses"][0]] = rec["good"]  # the latest rating of an answer counts
        prompts[rec["prompt_id"]] = rec["prompt"]
    out, lone = [], 0
    for conv, answers in verdict.items():
        good = [a for a, g in answers.items() if g]
        bad = [a for a, g in answers.items() if not g]
        if not good or not bad:
            lone += len(answers)
            continue
        out.append({"prompt_id": conv, "prompt": prompts[conv], "responses": good + bad,
                    "ranking": [list(range(len(good))), list(range(len(good), len(good) + len(bad)))]})
    counts = {"ratings": len(ratings), "rated_good": sum(r["good"] for r in ratings),
              "rated_bad": sum(not r["good"] for r in ratings), "rated_answers_without_opposite": lone}
    return out, counts


def is_heldout(prompt_id: str) -> bool:
    return int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16) % HELDOUT_EVERY == 0


@dataclass
class FeedbackData:
    train_pairs: list[dict]
    heldout_rankings: list[dict]  # K-way records never trained on (empty below HELDOUT_MIN_RANKINGS)
    counts: dict


def _tied_pairs(groups: list[list[int]]) -> int:
    return sum(len(g) * (len(g) - 1) // 2 for g in groups)


def feedback_data(directory: str | Path) -> FeedbackData:
    """The store as reward training pairs, its held-out rankings and counts for the report."""
    stored = read_store(directory)
    from_ratings, counts = rating_rankings(stored.ratings)
    enough = len(stored.rankings) >= HELDOUT_MIN_RANKINGS
    heldout = [r for r in stored.rankings if enough and is_heldout(r["prompt_id"])]
    held_ids = {r["prompt_id"] for r in heldout}
    pairs, rank_pairs, rating_pairs, ties, all_tied = [], 0, 0, 0, 0
    for rec in stored.rankings + from_ratings:
        groups = ranking_groups(rec["ranking"], len(rec["responses"]))
        if rec.get("kind") == "ranking":
            ties += _tied_pairs(groups)
        if rec["prompt_id"] in held_ids:
            continue  # the held-out conversations' ratings are not trained on either
        try:
            made = ranking_pairs({"prompt": rec["prompt"], "responses": rec["responses"], "ranking": groups})
        except Drop:  # every answer tied (or identical): a ranking that prefers nothing
            all_tied += rec.get("kind") == "ranking"
            continue
        made = [{**p, "group": f"feedback:{rec['prompt_id']}"} for p in made]
        if rec.get("kind") == "ranking":
            rank_pairs += len(made)
        else:
            rating_pairs += len(made)
        pairs += made
    counts.update(rankings=len(stored.rankings), ranking_pairs=rank_pairs, tied_answer_pairs=ties,
                  all_tied_rankings=all_tied, rating_pairs=rating_pairs, heldout_rankings=len(heldout),
                  heldout_min_rankings=HELDOUT_MIN_RANKINGS, unreadable_lines=len(stored.unreadable_lines),
                  people=sorted({r["labeler"] for r in stored.rankings + stored.ratings}),
                  agreement=people_agreement(stored.rankings))
    heldout_records = [{"prompt": r["prompt"], "responses": r["responses"],
                        "groups": ranking_groups(r["ranking"], len(r["responses"]))} for r in heldout]
    return FeedbackData(pairs, heldout_records, counts)


def is_store(source: str | Path) -> bool:
    """Whether a reward.data source is a feedback store: the `feedback` part (<run>/feedback, which may not
    exist yet) or any folder holding a feedback.jsonl (one that --feedback-dir named)."""
    p = Path(source)
    return not p.is_file() and (p.name == DIR_NAME or (p / STORE_FILE).is_file())


def feedback_pairs(directory: str | Path) -> list[dict]:
    """The training pairs of a store (the held-out conversations left out); a store with none is refused."""
    d = Path(directory)
    if not (d / STORE_FILE).is_file():
        raise UserError(f"reward.data names feedback but {d / STORE_FILE} does not exist yet: rank answers in "
                        "`make serve` or `make chat` (/alt K) first, or leave feedback out of reward.data.")
    data = feedback_data(d)
    if not data.train_pairs:
        c = data.counts
        raise UserError(f"{d / STORE_FILE} holds no preference pair to train on ({c['rankings']} rankings, "
                        f"{c['ratings']} ratings, {c['heldout_rankings']} rankings held out); rank more answers or "
                        "leave feedback out of reward.data.")
    return data.train_pairs


def people_agreement(rankings: list[dict]) -> dict:
    """Agreement between people who ranked the same answers to the same conversation (data/labels.py:
    Kendall tau per pair of people, averaged per conversation, then over conversations); the answers
    are put in one order first, since two people may have been shown them in different orders."""
    canonical = []
    for rec in rankings:
        order = sorted(range(len(rec["responses"])), key=lambda i: rec["responses"][i])
        new_index = {old: new for new, old in enumerate(order)}
        groups = ranking_groups(rec["ranking"], len(rec["responses"]))
        canonical.append({"prompt_id": rec["prompt_id"], "labeler": rec["labeler"],
                          "responses": [rec["responses"][i] for i in order],
                          "ranking": [[new_index[i] for i in g] for g in groups]})
    return agreement(canonical)
