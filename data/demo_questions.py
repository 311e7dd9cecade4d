"""How the demo asks about a documented object, and the answers (good and bad) it gives.

The gold answer is the docstring's summary paragraph, shortened to whole sentences so it fits a
256-token SFT sequence and a 48-token PPO response. Ranking candidates are graded by construction:
the right summary > the right object but truncated (and, from K=5, vague) > a sibling object's
summary (same module or class: plausible but wrong) > an unrelated object's summary.
Vague answers rank below the truncated one only from K=5: at K=4 a templated vague answer would
win two of its three pairs on its template alone, teaching the reward model a cue, not content.
"""

from __future__ import annotations

import random
import re

from data.pydocs import Doc

WHAT_TEMPLATES = (
    "What does `{name}` do?",
    "What does {name} do?",
    "Explain {name}.",
    "Explain `{name}` in one sentence.",
    "What is `{name}` for?",
    "Describe the {kind} `{name}`.",
    "Tell me about {name}.",
    "What is {name} in Python?",
    "I found `{name}` in some code. What does it do?",
    "In Python, what is the purpose of `{name}`?",
    "Can you summarize what {name} does?",
    "Briefly, what does the {kind} {name} do?",
)
HOW_TEMPLATES = (
    "How do I use {name}?",
    "How do I use `{name}` in Python?",
    "How is `{name}` called, and what does it do?",
)
SIGNATURE_TEMPLATES = (
    "What is the signature of `{name}`?",
    "What arguments does {name} take?",
    "How do I call `{name}`?",
)
FOLLOW_UP_TEMPLATES = (
    "What is its signature?",
    "And how do I call it?",
    "Which arguments does it take?",
    "Show me its signature.",
)
VAGUE_TEMPLATES = (
    "`{name}` is a {kind} in `{parent}`.",
    "It is a {kind} from {parent}; see its documentation.",
    "`{name}` is something you can use in Python.",
    "This {kind} is part of {parent} and is used in many programs.",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(\[])")
_MIN_WORDS = 4


def summary(doc: Doc) -> str:
    """The docstring's first paragraph on one line."""
    first = re.split(r"\n\s*\n", doc.docstring.strip(), maxsplit=1)[0]
    return " ".join(first.split())


def shorten(text: str, max_words: int) -> tuple[str, bool]:
    """At most `max_words` words, cut at a sentence boundary; (text, whether it was shortened).

    A first sentence longer than the limit is cut at a word boundary and ends with "...".
    """
    if len(text.split()) <= max_words:
        return text, False
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len((" ".join(kept + [sentence])).split()) > max_words:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept), True
    return " ".join(text.split()[:max_words]).rstrip(",;:") + "...", True


def is_askable(doc: Doc, text: str) -> bool:
    """A question about this object has a clear, self-contained answer."""
    if doc.kind not in ("function", "method", "class"):
        return False
    if len(text.split()) < _MIN_WORDS or not text[:1].isupper():
        return False
    return "=" not in text.split()[0]  # `csv_reader = reader(...)`: code, not a summary


def kind_word(doc: Doc) -> str:
    return {"method": "method", "class": "class"}.get(doc.kind, "function")


def what_prompt(doc: Doc, rng: random.Random) -> str:
    return rng.choice(WHAT_TEMPLATES).format(name=doc.name, kind=kind_word(doc))


def sft_conversations(doc: Doc, answer: str, rng: random.Random, n_questions: int = 2) -> list[list[dict]]:
    """Several conversations about one object: differently phrased questions, and with a known
    signature a "how do I use it" answer, a signature question and a multi-turn follow-up."""
    convs = []
    for template in rng.sample(WHAT_TEMPLATES, n_questions):
        q = template.format(name=doc.name, kind=kind_word(doc))
        convs.append([{"role": "user", "content": q}, {"role": "assistant", "content": answer}])
    if doc.signature:
        sig = f"`{doc.signature}`"
        q = rng.choice(HOW_TEMPLATES).format(name=doc.name)
        convs.append([{"role": "user", "content": q},
                      {"role": "assistant", "content": f"Call it as {sig}. {answer}"}])
        if rng.random() < 0.5:
            q = rng.choice(SIGNATURE_TEMPLATES).format(name=doc.name)
            convs.append([{"role": "user", "content": q},
                          {"role": "assistant", "content": f"The signature is {sig}."}])
        else:
            convs.append([
                {"role": "user", "content": what_prompt(doc, rng)},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": rng.choice(FOLLOW_UP_TEMPLATES)},
                {"role": "assistant", "content": f"The signature is {sig}."},
            ])
    return convs


def truncated(answer: str) -> str:
    """The first half of the answer, ended like a whole answer.

    No "..." or other mark of the cut: a mark would be a surface cue that the reward model learns
    instead of the content (the truncated answer beats two of its three rivals, so the mark itself
    would score as good, and PPO would learn to write it)."""
    words = answer.split()
    keep = max(2, len(words) // 2)
    return " ".join(words[:keep]).rstrip(",;:.") + "."


def vague(doc: Doc, rng: random.Random) -> str:
    return rng.choice(VAGUE_TEMPLATES).format(name=doc.name, kind=kind_word(doc), parent=doc.parent)


def candidate_plan(k: int) -> list[str]:
    """The quality ladder for K candidates, best first."""
    plans = {
        2: ["gold", "sibling"],
        3: ["gold", "truncated", "unrelated"],
        4: ["gold", "truncated", "sibling", "unrelated"],
        5: ["gold", "truncated", "vague", "sibling", "unrelated"],
        6: ["gold", "truncated", "vague", "sibling", "sibling_truncated", "unrelated"],
    }
    return plans[k]


def candidates(doc: Doc, answer: str, k: int, siblings: list[str], others: list[str],
               rng: random.Random) -> list[str]:
    """K distinct answers to a question about `doc`, best first.

    siblings: gold answers of other objects with the same parent; others: of unrelated objects.
    Either list may be empty; a missing sibling falls back to an unrelated answer.
    """
    chosen: list[str] = []

    def fresh(pool: list[str]) -> str:
        options = [a for a in pool if a not in chosen and a != answer]
        return rng.choice(options) if options else ""

    for level in candidate_plan(k):
        if level == "gold":
            text = answer
        elif level == "truncated":
            text = truncated(answer)
        elif level == "vague":
            text = vague(doc, rng)
        elif level == "sibling":
            text = fresh(siblings) or fresh(others)
        elif level == "sibling_truncated":
            text = truncated(fresh(siblings) or fresh(others))
        else:
            text = fresh(others)
        if not text or text in chosen:  # tiny pools: fall back to anything unused
            text = fresh(others) or f"I am not sure what `{doc.name}` does."
        if level in ("sibling", "unrelated") and rng.random() < 0.5 and truncated(text) not in chosen:
            # Wrong answers as short as the truncated one half of the time: otherwise "shorter wins"
            # (the truncated answer beats two longer rivals) is a cue the reward model learns, and
            # PPO then shortens answers instead of making them right.
            text = truncated(text)
        chosen.append(text)
    return chosen
