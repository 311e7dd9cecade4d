"""One person's labeling session over a set of candidates, shared by the browser and the terminal.

The labels file is the only state that survives: the session reads it at start (resume), counts a prompt as
ranked when this labeler ranked exactly these answers (a new round's answers to the same prompt are new
work), and appends every submission to it at once.
"""

from __future__ import annotations

import random
from pathlib import Path

from data.labels import append_label, ranking_groups, read_labels
from pipeline.errors import UserError
from stages.rank.labels import label_record


class UnknownPrompt(KeyError):
    """A prompt id that is not among this session's candidates."""


def check_candidates(candidates: list[dict]) -> dict[str, dict]:
    """prompt_id -> candidate, in the given order; a malformed candidate is a UserError naming it."""
    by_id: dict[str, dict] = {}
    for n, cand in enumerate(candidates):
        where = f"candidate {n}" + (f" ({cand.get('prompt_id')!r})" if isinstance(cand, dict) else "")
        if not isinstance(cand, dict) or not isinstance(cand.get("prompt_id"), str):
            raise UserError(f"{where}: expected a candidates.jsonl record with a string \"prompt_id\".")
        if cand["prompt_id"] in by_id:
            raise UserError(f"{where}: prompt_id {cand['prompt_id']!r} appears twice; each prompt is ranked once.")
        responses = cand.get("responses")
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise UserError(f"{where}: \"responses\" must be a list of at least 2 answer strings.")
        if not isinstance(cand.get("prompt"), str) and not isinstance(cand.get("messages"), list):
            raise UserError(f"{where}: needs a \"prompt\" string or a \"messages\" list.")
        by_id[cand["prompt_id"]] = cand
    if not by_id:
        raise UserError("there are no candidates to rank.")
    return by_id


def display_order(seed: int, prompt_id: str, k: int) -> list[int]:
    """The answers' on-screen order for one prompt: random, so the sampling order (temperature) cannot bias
    the person, and the same on every visit, so going back shows the page as it was."""
    order = list(range(k))
    random.Random(f"{seed}:{prompt_id}").shuffle(order)  # a str seed is stable across runs and machines
    return order


def prompt_turns(cand: dict) -> list[dict]:
    """The prompt as chat turns ({"role", "content"}); a plain prompt is one user turn."""
    if isinstance(cand.get("prompt"), str):
        return [{"role": "user", "content": cand["prompt"]}]
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in cand["messages"]]


class LabelingSession:
    def __init__(self, candidates: list[dict], labels_path: Path, *, labeler: str, seed: int = 0):
        if not isinstance(labeler, str) or not labeler.strip():
            raise UserError("the labeler name is empty; set rank.labeler_name=YOUR_NAME.")
        self.candidates = check_candidates(candidates)
        self.labels_path, self.labeler, self.seed = Path(labels_path), labeler, seed
        self.submitted = 0  # submissions in this session (re-ranks included)
        previous = read_labels(self.labels_path)
        self.bad_lines = previous.bad_lines
        self.mine: dict[str, dict] = {}
        self.changed_answers = 0  # prompts this labeler ranked before, but with other answers (another round)
        for rec in previous.records:
            cand = self.candidates.get(rec["prompt_id"])
            if rec["labeler"] != labeler or cand is None:
                continue
            if rec["responses"] == cand["responses"]:
                self.mine[rec["prompt_id"]] = rec
            else:
                self.changed_answers += 1

    def notes(self) -> list[str]:
        """What the person should know about the labels file before starting."""
        out = []
        if self.mine:
            out.append(f"resuming: {len(self.mine)} of {len(self.candidates)} prompts already ranked by "
                       f"{self.labeler!r} in {self.labels_path}")
        if self.changed_answers:
            out.append(f"{self.changed_answers} earlier rankings by {self.labeler!r} were of other answers to the "
                       "same prompts (another round); those prompts are ranked again")
        if self.bad_lines:
            lines = ", ".join(map(str, self.bad_lines[:5])) + (" ..." if len(self.bad_lines) > 5 else "")
            out.append(f"warning: {self.labels_path}: {len(self.bad_lines)} unreadable line(s) skipped "
                       f"(line {lines}); the file is kept as it is")
        return out

    def progress(self) -> dict:
        ranked = len(self.mine)
        return {"ranked": ranked, "total": len(self.candidates), "remaining": len(self.candidates) - ranked}

    def recent(self) -> list[str]:
        """Prompt ids this labeler ranked, oldest first (what "back" walks through after a restart)."""
        return list(self.mine)

    def next_unranked(self, after: str | None = None) -> str | None:
        """The first unranked prompt after `after` in candidate order, wrapping round; `after` itself only
        when it is the last one left; None when all are ranked."""
        ids = list(self.candidates)
        start = ids.index(after) + 1 if after in self.candidates else 0
        for pid in ids[start:] + ids[:start]:
            if pid not in self.mine:
                return pid
        return None

    def candidate(self, prompt_id) -> dict:
        if not isinstance(prompt_id, str) or prompt_id not in self.candidates:
            raise UnknownPrompt(prompt_id)
        return self.candidates[prompt_id]

    def view(self, prompt_id: str) -> dict:
        """What the person sees for one prompt: its turns, the answers in display order, and their earlier
        ranking (original answer indices) if they ranked it before."""
        cand = self.candidate(prompt_id)
        k = len(cand["responses"])
        earlier = self.mine.get(prompt_id)
        return {"prompt_id": prompt_id, "turns": prompt_turns(cand),
                "answers": [{"index": i, "text": cand["responses"][i]} for i in display_order(self.seed, prompt_id, k)],
                "earlier": None if earlier is None else {"ranking": ranking_groups(earlier["ranking"], k),
                                                         "all_bad": bool(earlier.get("all_bad"))}}

    def submit(self, prompt_id: str, ranking, all_bad: bool = False) -> dict:
        """Check, append (durable on return) and count one ranking; raises UnknownPrompt or BadRanking."""
        cand = self.candidate(prompt_id)
        groups = ranking_groups(ranking, len(cand["responses"]))
        rec = label_record(cand, groups, labeler=self.labeler, all_bad=all_bad)
        append_label(self.labels_path, rec)
        self.mine.pop(prompt_id, None)  # re-insert: the recent list stays in order of last submission
        self.mine[prompt_id] = rec
        self.submitted += 1
        return rec
