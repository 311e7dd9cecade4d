"""Ranking in a terminal (rank.ui=terminal): the same session as the browser page, one prompt at a time.

The person types the answers' numbers best first: `2 1 3 4`; `2 1=3 4` ties answers 1 and 3; the last
number may be left out. `x` marks all answers bad (`x 2 1 3 4` keeps an order too), `s` skips, `b` goes
back to the previous prompt, `q` finishes for now.
"""

from __future__ import annotations

import textwrap

from data.labels import ORDER_HELP, BadRanking, format_order, parse_order
from stages.rank.session import LabelingSession, display_order

HELP = f"{ORDER_HELP}, x = all bad, s = skip, b = back, q = finish for now"


def show(session: LabelingSession, prompt_id: str, print_fn) -> None:
    view, p = session.view(prompt_id), session.progress()
    print_fn(f"\n── {prompt_id} · {p['ranked']} of {p['total']} ranked, {p['remaining']} left " + "─" * 20)
    for turn in view["turns"]:
        print_fn(f"{turn['role'].capitalize()}:")
        print_fn(textwrap.indent(turn["content"], "    "))
    for number, answer in enumerate(view["answers"], 1):
        print_fn(f"\n[{number}]")
        print_fn(textwrap.indent(answer["text"] or "(empty answer)", "    "))
    if view["earlier"]:
        number_of = {a["index"]: n for n, a in enumerate(view["answers"], 1)}
        earlier = [[number_of[i] for i in g] for g in view["earlier"]["ranking"]]
        bad = " (all bad)" if view["earlier"]["all_bad"] else ""
        print_fn(f"\nyou ranked this before: {format_order(earlier)}{bad}; a new order replaces it")


def run_terminal(session: LabelingSession, input_fn, print_fn) -> None:
    history = session.recent()  # prompts ranked, oldest first: where "back" goes
    current = session.next_unranked()
    shown = None
    print_fn(HELP)
    while current is not None:
        if current != shown:  # after a refused line, ask again without repeating the whole page
            show(session, current, print_fn)
            shown = current
        k = len(session.candidates[current]["responses"])
        answer = input_fn("order> ").strip()
        command, _, rest = answer.partition(" ")
        if answer == "q":
            return
        if answer == "s":
            following = session.next_unranked(after=current)
            if following == current:
                print_fn("this is the only prompt left")
            current = following
            continue
        if answer == "b":
            earlier = history[:history.index(current)] if current in history else history
            if not earlier:
                print_fn("nothing to go back to yet")
                continue
            current = earlier[-1]
            continue
        all_bad = command == "x"
        if all_bad:
            answer = rest.strip() or "=".join(str(n) for n in range(1, k + 1))  # no order given: all tied
        try:
            groups = parse_order(answer, k)
        except BadRanking as e:
            print_fn(f"not saved: {e}")
            continue
        slots = display_order(session.seed, current, k)
        session.submit(current, [[slots[n - 1] for n in g] for g in groups], all_bad)
        if current in history:
            history.remove(current)
        history.append(current)
        print_fn(f"saved: {format_order(groups)}" + (" (all bad)" if all_bad else ""))
        current = session.next_unranked(after=current)
