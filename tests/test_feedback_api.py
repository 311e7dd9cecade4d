"""POST /v1/feedback: people rank or rate the server's answers by the ids the API returned, and the
preference store (data/feedback.py) keeps exactly what they submitted, with where it came from.

Specification: the official `openai` client makes completions (n=2) and ranks their answers; a rating
of a streamed answer is stored too; bad bodies (unknown or expired ids, answers to different
conversations, an answer named twice, malformed JSON shapes) get OpenAI-format 4xx errors and the
server keeps serving; feedback needs the API key when one is set; --no-feedback answers 403; the
status route says where feedback goes. A served model from a run stores into the run's own folder."""

import json

import pytest
from openai import OpenAI
from serve_fixtures import httpx, running_server, served_models

from apps.serve.__main__ import parse_args
from apps.serve.feedback import Completion, CompletionMemory
from data.feedback import STORE_FILE, read_store, store_dir
from pipeline.errors import UserError

FINGERPRINT = "0123456789abcdef"
QUESTION = [{"role": "user", "content": "What does len do?"}]


def as_run_artifact(model_dir, stage: str) -> None:
    """Make a copied model look like a finished artifact of a run (its manifest names the stage)."""
    (model_dir / "manifest.json").write_text(json.dumps({"stage": stage, "status": "complete",
                                                         "fingerprint": FINGERPRINT}))


@pytest.fixture(scope="module")
def run_dir(tiny_lm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "tiny"
    root.mkdir()
    sft, ppo = served_models(tiny_lm_dir, root)
    as_run_artifact(sft, "sft")
    return root


@pytest.fixture(scope="module")
def server(run_dir):
    with running_server("--model", str(run_dir / "sft"), "--compare", str(run_dir / "ppo"), "--max-n", "4",
                        "--max-tokens", "16") as s:
        yield s
    assert "Traceback" not in s.stderr and "Warning" not in s.stderr, s.stderr
    assert f"feedback: stored in {run_dir.resolve() / 'feedback' / STORE_FILE}" in s.stderr


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def post(server, body, **kwargs) -> httpx.Response:
    return httpx.post(server.url + "/v1/feedback", json=body, timeout=30, **kwargs)


def stored(run_dir):
    return read_store(run_dir / "feedback")


def test_the_openai_client_ranks_the_answers_of_two_completions_and_the_store_holds_that_ranking(client, run_dir):
    first = client.chat.completions.create(model="sft", messages=QUESTION, n=2, max_tokens=8, seed=1)
    second = client.chat.completions.create(model="sft", messages=QUESTION, n=2, max_tokens=8, seed=9,
                                            temperature=0.5)
    # best: second's 1; then first's 0 and second's 0 tied; worst: first's 1
    ranking = [[{"id": second.id, "index": 1}], [{"id": first.id, "index": 0}, {"id": second.id, "index": 0}],
               [{"id": first.id, "index": 1}]]
    answer = client.post("/feedback", body={"ranking": ranking, "reason": "the first is precise", "labeler": "ada"},
                         cast_to=object)
    assert answer["stored"] is True and answer["id"].startswith("fb-")
    rec = next(r for r in stored(run_dir).rankings if r["id"] == answer["id"])
    texts = [second.choices[1], first.choices[0], second.choices[0], first.choices[1]]
    assert rec["responses"] == [c.message.content for c in texts]
    assert rec["ranking"] == [[0], [1, 2], [3]] and rec["prompt"] == QUESTION
    assert rec["labeler"] == "ada@serve" and rec["reason"] == "the first is precise"
    assert [(a["completion"], a["index"]) for a in rec["answers"]] == [(second.id, 1), (first.id, 0),
                                                                      (second.id, 0), (first.id, 1)]
    assert {a["model"] for a in rec["answers"]} == {"sft"}
    assert {a["model_fingerprint"] for a in rec["answers"]} == {FINGERPRINT}
    assert rec["answers"][0]["sampling"]["temperature"] == 0.5 and rec["answers"][1]["sampling"]["seed"] == 1


def test_a_ranking_may_compare_the_two_served_models_on_the_same_messages(client, run_dir):
    a = client.chat.completions.create(model="sft", messages=QUESTION, max_tokens=6)
    b = client.chat.completions.create(model="ppo", messages=QUESTION, max_tokens=6)
    answer = client.post("/feedback", body={"ranking": [[{"id": b.id, "index": 0}], [{"id": a.id, "index": 0}]]},
                         cast_to=object)
    rec = next(r for r in stored(run_dir).rankings if r["id"] == answer["id"])
    assert [x["model"] for x in rec["answers"]] == ["ppo", "sft"] and rec["labeler"] == "person@serve"
    assert rec["answers"][1]["model_fingerprint"] == FINGERPRINT and rec["answers"][0]["model_fingerprint"]


def test_a_streamed_answer_can_be_rated(client, run_dir):
    chunks = list(client.chat.completions.create(model="sft", messages=QUESTION, max_tokens=6, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = client.post("/feedback", body={"rating": {"id": chunks[0].id, "index": 0, "good": False}},
                         cast_to=object)
    rec = next(r for r in stored(run_dir).ratings if r["id"] == answer["id"])
    assert rec["responses"] == [text] and rec["good"] is False and rec["kind"] == "rating"


def test_the_status_route_says_feedback_is_on_and_where_it_goes(server, run_dir):
    status = httpx.get(server.url + "/v1/feedback/status").json()
    assert status["enabled"] is True
    assert status["store"] == str(run_dir.resolve() / "feedback" / STORE_FILE)
    assert status["capacity"] == 2048 and status["remembered"] >= 1


def test_bad_feedback_gets_an_openai_format_4xx_and_the_server_keeps_serving(client, server, run_dir):
    done = client.chat.completions.create(model="sft", messages=QUESTION, n=2, max_tokens=4)
    other = client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "And str?"}],
                                           max_tokens=4)
    ok = {"id": done.id, "index": 0}
    before = stored(run_dir)
    cases = {
        "not an object": ([ok], 400),
        "neither ranking nor rating": ({"reason": "x"}, 400),
        "both": ({"ranking": [[ok]], "rating": {**ok, "good": True}}, 400),
        "unknown field": ({"ranking": [[ok], [{"id": done.id, "index": 1}]], "score": 3}, 400),
        "empty ranking": ({"ranking": []}, 400),
        "a group that is no list": ({"ranking": [ok, {"id": done.id, "index": 1}]}, 400),
        "an empty group": ({"ranking": [[ok], []]}, 400),
        "one answer only": ({"ranking": [[ok]]}, 400),
        "unknown id": ({"ranking": [[ok], [{"id": "chatcmpl-nothing", "index": 0}]]}, 404),
        "index out of range": ({"ranking": [[ok], [{"id": done.id, "index": 2}]]}, 400),
        "index not an integer": ({"ranking": [[ok], [{"id": done.id, "index": "1"}]]}, 400),
        "the same answer twice": ({"ranking": [[ok], [ok]]}, 400),
        "tied with itself": ({"ranking": [[ok, ok]]}, 400),
        "different conversations": ({"ranking": [[ok], [{"id": other.id, "index": 0}]]}, 400),
        "rating without good": ({"rating": ok}, 400),
        "good not a boolean": ({"rating": {**ok, "good": "yes"}}, 400),
        "reason not text": ({"rating": {**ok, "good": True}, "reason": 5}, 400),
        "a labeler name with a slash": ({"rating": {**ok, "good": True}, "labeler": "a/b"}, 400),
        "all_bad on a rating": ({"rating": {**ok, "good": False}, "all_bad": True}, 400),
    }
    for what, (body, status) in cases.items():
        res = post(server, body)
        assert res.status_code == status, (what, res.status_code, res.text)
        error = res.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], what
    res = httpx.post(server.url + "/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert res.status_code == 400 and "not valid JSON" in res.json()["error"]["message"]
    assert post(server, {"ranking": [[ok], [ok]]}).json()["error"]["code"] == "duplicate_answer"
    assert post(server, {"ranking": [[ok], [{"id": other.id, "index": 0}]]}).json()["error"]["code"] == \
        "mixed_conversations"
    after = stored(run_dir)
    assert (len(after.rankings), len(after.ratings)) == (len(before.rankings), len(before.ratings))
    assert client.chat.completions.create(model="sft", messages=QUESTION, max_tokens=3).choices[0].finish_reason


def test_feedback_needs_the_api_key_and_is_refused_when_off(run_dir):
    env = {"SERVE_API_KEY": "secret"}
    with running_server("--model", str(run_dir / "ppo"), "--no-feedback", env=env) as server:
        auth = {"Authorization": "Bearer secret"}
        done = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=30,
                          json={"model": "ppo", "messages": QUESTION, "max_tokens": 3}).json()
        body = {"rating": {"id": done["id"], "index": 0, "good": True}}
        assert post(server, body).status_code == 401
        off = post(server, body, headers=auth)
        assert off.status_code == 403 and off.json()["error"]["code"] == "feedback_off"
        status = httpx.get(server.url + "/v1/feedback/status", headers=auth).json()
        assert status["enabled"] is False and status["store"] is None and "--no-feedback" in status["note"]


def test_a_model_from_no_run_records_feedback_only_where_feedback_dir_says(run_dir, tmp_path):
    assert store_dir(str(run_dir / "sft"), None, off=False)[0] == run_dir.resolve() / "feedback"
    where, note = store_dir(str(run_dir / "ppo"), None, off=False)  # ppo here has no manifest
    assert where is None and "--feedback-dir" in note
    assert store_dir(str(run_dir / "ppo"), str(tmp_path), off=False)[0] == tmp_path
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        store_dir(str(run_dir / "ppo"), str(tmp_path / "file"), off=False)
    with pytest.raises(UserError, match="cannot create the feedback folder"):  # a path through a file
        store_dir(str(run_dir / "ppo"), str(tmp_path / "file" / "inside"), off=False)
    with pytest.raises(UserError, match="contradict"):
        parse_args(["--model", str(run_dir / "ppo"), "--no-feedback", "--feedback-dir", str(tmp_path)])


def test_the_memory_forgets_the_least_recently_used_completion_first_and_is_bounded_in_text():
    memory = CompletionMemory(capacity=2)
    for cid in ("a", "b"):
        memory.remember(cid, Completion(QUESTION, ["x"], "sft", None, {}))
    assert memory.get("a") is not None  # a is now the most recently used
    memory.remember("c", Completion(QUESTION, ["y"], "sft", None, {}))
    assert memory.get("b") is None and memory.get("a") is not None and memory.get("c") is not None
    assert len(memory) == 2
    by_size = CompletionMemory(capacity=10, max_chars=30)  # the text bound: long conversations go sooner
    for cid in ("a", "b", "c"):
        by_size.remember(cid, Completion([{"role": "user", "content": "q" * 5}], ["x" * 7], "sft", None, {}))
    assert by_size.get("a") is None and by_size.get("b") and by_size.get("c") and by_size.chars == 24
