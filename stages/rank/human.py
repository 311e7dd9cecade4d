"""A person ranks the answers: in the browser (rank.ui=browser, the default) or in the terminal.

Both entry points read the labels file first and resume where the person stopped, show each prompt's
answers in a random order seeded by (seed, prompt_id) with no model names, and append every ranking to the
labels file the moment it is given (data/labels.py), so stopping at any point loses nothing.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.listen import bind, is_loopback
from stages.rank.session import LabelingSession


def _summary(session: LabelingSession) -> str:
    p = session.progress()
    left = "all prompts ranked" if p["remaining"] == 0 else f"{p['remaining']} left; run the same command to continue"
    return (f"rank: {p['ranked']} of {p['total']} prompts ranked by {session.labeler!r} "
            f"({session.submitted} submitted now), {left}; labels in {session.labels_path}")


def label_in_browser(candidates: list[dict], labels_path: Path, *, labeler: str, host: str = "127.0.0.1",
                     port: int = 0, seed: int = 0, open_message=print) -> dict:
    """Serve the labeling page until every prompt has this labeler's ranking, the person clicks "Finish
    for now", or Ctrl-C. Returns {"ranked", "remaining", "url"} (url None when nothing was left to rank)."""
    from stages.rank import web  # FastAPI and uvicorn load only when a person labels

    session = LabelingSession(candidates, labels_path, labeler=labeler, seed=seed)
    for note in session.notes():
        open_message(note)
    if session.progress()["remaining"] == 0:
        open_message(_summary(session))
        return {**_counts(session), "url": None}
    if not is_loopback(host):
        open_message(f"warning: serving on {host}, not only this machine: anyone who can reach it can read the "
                     "prompts and submit rankings. Use rank.host=127.0.0.1 unless you mean this.")
    sock = bind(host, port, what="the labeling page", other_port="rank.port", backlog=16)
    url = web.url_of(sock)
    open_message(f"rank: open {url} in a browser to rank {session.progress()['remaining']} prompts as "
                 f"{labeler!r} (Ctrl-C or the page's \"Finish for now\" stops; every ranking is saved at once)")
    try:
        web.serve(session, sock)
    except KeyboardInterrupt:
        pass  # uvicorn already shut down cleanly; everything submitted is on disk
    finally:
        sock.close()
    open_message(_summary(session))
    return {**_counts(session), "url": url}


def label_in_terminal(candidates: list[dict], labels_path: Path, *, labeler: str, seed: int = 0,
                      input_fn=input, print_fn=print) -> dict:
    """The same in a terminal, for machines without a browser. Returns {"ranked", "remaining"}."""
    from stages.rank.terminal import run_terminal

    session = LabelingSession(candidates, labels_path, labeler=labeler, seed=seed)
    for note in session.notes():
        print_fn(note)
    try:
        run_terminal(session, input_fn, print_fn)
    except (KeyboardInterrupt, EOFError):
        print_fn("")
    print_fn(_summary(session))
    return _counts(session)


def _counts(session: LabelingSession) -> dict:
    p = session.progress()
    return {"ranked": p["ranked"], "remaining": p["remaining"]}
