"""Feedback in the terminal chat: /good and /bad rate the last answer, /alt K samples K answers to the
last message and asks for a ranking, typed as in the rank stage's terminal labeler (`2 1 3`, `2 1=3`
ties, the last number may be left out, `x` all bad, `s` or an empty line skips). Each is stored in the
preference store (data/feedback.py) as NAME@chat; after a ranking the conversation goes on with the
answer ranked best in place of the last one.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from data.feedback import FeedbackStore, ranking_record, rating_record
from data.labels import ORDER_HELP, BadRanking, format_order, parse_order
from pipeline.lm.generation import generate

MAX_ALTERNATIVES = 9  # one keystroke each; more do not fit a terminal side by side anyway


def sample_alternatives(chat, k: int) -> list[str]:
    """k answers to the conversation the chat's last answer replies to, sampled together with its settings."""
    last, chat.history = chat.history, chat.history[:-1]
    try:
        ids, budget = chat.prompt_ids()
    finally:
        chat.history = last
    s = chat.sampling
    answers = generate(chat.model, [ids] * k, max_new_tokens=budget, eos_ids=chat.eos_ids,
                       pad_id=chat.tok.pad_token_id, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                       generator=chat.generator)
    return [chat.tok.decode([t for t in a if t not in chat.eos_ids], skip_special_tokens=True) for a in answers]


class ChatFeedback:
    def __init__(self, store_dir: Path | None, note: str, *, model: str, fingerprint: str | None,
                 labeler: str = "person"):
        self.store = FeedbackStore(store_dir) if store_dir else None
        self.note, self.model, self.fingerprint = note, model, fingerprint
        self.labeler = f"{labeler}@chat"

    def _answer(self, chat, text: str) -> dict:
        s = chat.sampling
        return {"text": text, "model": self.model, "model_fingerprint": self.fingerprint,
                "sampling": {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                             "max_new_tokens": s.max_new_tokens, "seed": chat.seed}}

    def _ready(self, chat, err) -> bool:
        if self.store is None:
            print(self.note, file=err)
            return False
        if not chat.history or chat.history[-1]["role"] != "assistant":
            print("there is no answer yet: say something first", file=err)
            return False
        return True

    def rate(self, chat, good: bool, reason: str, err) -> None:
        if not self._ready(chat, err):
            return
        rec = rating_record(chat.asked(), self._answer(chat, chat.history[-1]["content"]), good,
                            labeler=self.labeler, reason=reason or None)
        self.store.append(rec)
        print(f"stored: the last answer is {'good' if good else 'bad'} ({self.store.path})", file=err)

    def alternatives(self, chat, arg: str, read_line, out, err) -> None:
        """Sample k answers to the last message, show them, store the person's ranking."""
        try:
            k = int(arg or 3)
            if not 2 <= k <= MAX_ALTERNATIVES:
                raise ValueError
        except ValueError:
            print(f"/alt needs a number of answers from 2 to {MAX_ALTERNATIVES}, got {arg!r}", file=err)
            return
        if not self._ready(chat, err):
            return
        texts = sample_alternatives(chat, k)
        for n, text in enumerate(texts, 1):
            out.write(f"\n[{n}]\n{textwrap.indent(text or '(empty answer)', '    ')}\n")
        out.flush()
        while True:
            line = read_line(f"rank [1-{k}]> ")
            if line is None or line.strip() in ("", "s"):
                print("not stored (skipped)", file=err)
                return
            command, _, rest = line.strip().partition(" ")
            all_bad = command == "x"
            order = (rest.strip() or "=".join(str(n) for n in range(1, k + 1))) if all_bad else line
            try:
                groups = parse_order(order, k)
                break
            except BadRanking as e:
                print(f"not stored: {e}; {ORDER_HELP}, x = all bad, s = skip", file=err)
        rec = ranking_record(chat.asked(), [self._answer(chat, t) for t in texts],
                             [[n - 1 for n in g] for g in groups], labeler=self.labeler, all_bad=all_bad)
        self.store.append(rec)
        best = groups[0][0]
        chat.history[-1] = {"role": "assistant", "content": texts[best - 1]}
        print(f"stored: {format_order(groups)}" + (" (all bad)" if all_bad else "")
              + f"; the conversation goes on with answer [{best}]", file=err)
