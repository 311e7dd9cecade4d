"""The preference store (data/feedback.py): appended crash-safe, read back latest-first with torn lines
skipped and counted, turned into reward training pairs by stated rules, never deleted by make clean.

Specification: a kill -9 of the server during a burst of feedback leaves a store holding every
acknowledged record and no torn one; a torn last line is skipped and counted and the next record
starts on a line of its own; a re-ranking by the same person replaces the earlier one; good and bad
ratings of answers to one conversation become pairs and a lone rating becomes none; with 50 rankings
or more a fifth of the conversations is held out of training; two people who ranked the same answers
(shown in different orders) get their agreement measured; `make clean` keeps the store."""

import json
import threading

from serve_fixtures import httpx, running_server, served_models

from data.feedback import (
    HELDOUT_MIN_RANKINGS,
    STORE_FILE,
    FeedbackStore,
    feedback_data,
    is_heldout,
    ranking_record,
    rating_record,
    read_store,
)
from pipeline.chain.clean import clean

QUESTION = [{"role": "user", "content": "What does len do?"}]


def answers(*texts: str) -> list[dict]:
    return [{"text": t, "completion": "chatcmpl-test", "index": i, "model": "sft"} for i, t in enumerate(texts)]


def question(n: int) -> list[dict]:
    return [{"role": "user", "content": f"question {n}"}]


def test_a_torn_last_line_is_skipped_and_counted_and_the_next_record_starts_a_new_line(tmp_path):
    store = FeedbackStore(tmp_path)
    first = store.append(ranking_record(QUESTION, answers("a", "b"), [[0], [1]], labeler="ada@serve"))
    with open(store.path, "ab") as f:
        f.write(b'{"kind": "ranking", "id": "fb-torn", "prom')  # a kill mid-write
    assert read_store(tmp_path).unreadable_lines == [2]
    last = store.append(rating_record(QUESTION, answers("c")[0], True, labeler="ada@serve"))
    stored = read_store(tmp_path)
    assert [r["id"] for r in stored.rankings] == [first] and [r["id"] for r in stored.ratings] == [last]
    assert stored.unreadable_lines == [2]


def test_the_latest_ranking_of_the_same_answers_by_the_same_person_wins(tmp_path):
    store = FeedbackStore(tmp_path)
    store.append(ranking_record(QUESTION, answers("a", "b"), [[0], [1]], labeler="ada@serve"))
    again = store.append(ranking_record(QUESTION, answers("b", "a"), [[0], [1]], labeler="ada@serve"))
    other = store.append(ranking_record(QUESTION, answers("a", "b"), [[0], [1]], labeler="bob@serve"))
    assert [r["id"] for r in read_store(tmp_path).rankings] == [again, other]


def test_good_and_bad_ratings_of_one_conversation_become_pairs_and_lone_ratings_none(tmp_path):
    store = FeedbackStore(tmp_path)
    for text, good in (("fine", True), ("wrong", False), ("also wrong", False)):
        store.append(rating_record(QUESTION, answers(text)[0], good, labeler="ada@chat"))
    store.append(rating_record(question(2), answers("alone")[0], True, labeler="ada@chat"))
    data = feedback_data(tmp_path)
    assert sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in data.train_pairs) == [
        ("fine", "also wrong"), ("fine", "wrong")]
    c = data.counts
    assert (c["ratings"], c["rated_good"], c["rated_bad"], c["rating_pairs"]) == (4, 2, 2, 2)
    assert c["rated_answers_without_opposite"] == 1 and c["rankings"] == 0


def test_rankings_give_the_rank_stages_pairs_ties_give_none_and_are_counted(tmp_path):
    store = FeedbackStore(tmp_path)
    store.append(ranking_record(QUESTION, answers("a", "b", "c"), [[0], [1, 2]], labeler="ada@serve"))
    store.append(ranking_record(question(2), answers("x", "y"), [[0, 1]], labeler="ada@serve", all_bad=True))
    data = feedback_data(tmp_path)
    assert sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in data.train_pairs) == [
        ("a", "b"), ("a", "c")]
    c = data.counts
    assert (c["rankings"], c["ranking_pairs"], c["tied_answer_pairs"], c["all_tied_rankings"]) == (2, 2, 2, 1)
    assert c["heldout_rankings"] == 0  # too few to hold any out


def test_with_enough_rankings_a_fifth_of_the_conversations_is_held_out_and_never_trained_on(tmp_path):
    store = FeedbackStore(tmp_path)
    for n in range(HELDOUT_MIN_RANKINGS):
        store.append(ranking_record(question(n), answers(f"good {n}", f"bad {n}"), [[0], [1]], labeler="ada@serve"))
    data = feedback_data(tmp_path)
    held = {r["prompt"][0]["content"] for r in data.heldout_rankings}
    trained = {p["prompt"][0]["content"] for p in data.train_pairs}
    assert held and trained and not held & trained and len(held) + len(trained) == HELDOUT_MIN_RANKINGS
    assert 0.1 < len(held) / HELDOUT_MIN_RANKINGS < 0.35 and data.counts["heldout_rankings"] == len(held)
    # the split hangs on the conversation alone: one more ranking moves no conversation across it
    store.append(ranking_record(question(999), answers("p", "q"), [[0], [1]], labeler="ada@serve"))
    assert held <= {r["prompt"][0]["content"] for r in feedback_data(tmp_path).heldout_rankings}
    assert all(is_heldout(r["prompt_id"]) for r in read_store(tmp_path).rankings
               if r["prompt"][0]["content"] in held)


def test_two_people_who_ranked_the_same_answers_shown_in_different_orders_are_compared(tmp_path):
    store = FeedbackStore(tmp_path)
    store.append(ranking_record(QUESTION, answers("a", "b", "c"), [[0], [1], [2]], labeler="ada@serve"))
    store.append(ranking_record(QUESTION, answers("c", "b", "a"), [[2], [1], [0]], labeler="bob@serve"))  # agrees
    store.append(ranking_record(question(2), answers("x", "y"), [[0], [1]], labeler="ada@serve"))
    store.append(ranking_record(question(2), answers("x", "y"), [[1], [0]], labeler="bob@serve"))  # disagrees
    agreement = feedback_data(tmp_path).counts["agreement"]
    assert agreement["prompts"] == 2 and agreement["mean_tau"] == 0.0
    assert agreement["pair_agreement"] == 0.5  # 3 of 3 pairs the same way, then 0 of 1
    assert agreement["by_pair"] == {"ada@serve~bob@serve": {"prompts": 2, "mean_tau": 0.0, "pair_agreement": 0.5}}
    assert feedback_data(tmp_path).counts["people"] == ["ada@serve", "bob@serve"]


def test_make_clean_keeps_the_store(tmp_path):
    run = tmp_path / "tiny"
    FeedbackStore(run / "feedback").append(rating_record(QUESTION, answers("a")[0], True, labeler="ada@serve"))
    deleted, kept = clean(run)
    assert deleted == [] and kept == [run / "feedback"] and (run / "feedback" / STORE_FILE).is_file()


def test_kill_9_during_a_burst_of_feedback_loses_no_acknowledged_record_and_tears_none(tiny_lm_dir, tmp_path):
    sft, _ = served_models(tiny_lm_dir, tmp_path)
    store = tmp_path / "store"
    acknowledged, errors = [], []
    with running_server("--model", str(sft), "--feedback-dir", str(store)) as server:
        done = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                          json={"model": "sft", "messages": QUESTION, "max_tokens": 4, "n": 2}).json()
        enough = threading.Event()

        def burst(worker: int):
            with httpx.Client(timeout=10) as http:
                for n in range(10_000):
                    body = ({"ranking": [[{"id": done["id"], "index": n % 2}], [{"id": done["id"], "index": 1 - n % 2}]]}
                            if worker % 2 else {"rating": {"id": done["id"], "index": 0, "good": bool(n % 2)}})
                    body["labeler"] = f"w{worker}-{n}"  # every record distinct: none replaces another
                    try:
                        res = http.post(server.url + "/v1/feedback", json=body)
                    except httpx.HTTPError:
                        return  # the server is gone
                    if res.status_code != 200:
                        errors.append(res.text)
                        return
                    acknowledged.append(res.json()["id"])
                    if len(acknowledged) >= 60:
                        enough.set()

        workers = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
        for w in workers:
            w.start()
        assert enough.wait(60), errors
        server.proc.kill()  # SIGKILL: no handler runs
        for w in workers:
            w.join(30)
    stored = read_store(store)
    ids = {r["id"] for r in stored.rankings + stored.ratings}
    assert not errors and stored.unreadable_lines == []
    assert set(acknowledged) <= ids and len(acknowledged) >= 60
    lines = (store / STORE_FILE).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
