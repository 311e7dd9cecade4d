"""`python -m apps.serve` speaks OpenAI's chat-completions API: the official `openai` client works
against it (streaming, n, logprobs, stop, seed), bad requests get OpenAI-style 4xx errors and the
server keeps answering, concurrent clients are batched together, and a client that leaves stops
its generation. One server (two real tiny models) on a free loopback port serves the module."""

import json
import threading
import time

import pytest
from openai import OpenAI
from serve_fixtures import httpx, running_server, served_models

MAX_TOKENS_LIMIT = 5000


@pytest.fixture(scope="module")
def server(tiny_lm_dir, tmp_path_factory):
    sft, ppo = served_models(tiny_lm_dir, tmp_path_factory.mktemp("runs"))
    with running_server("--model", str(sft), "--compare", str(ppo), "--max-tokens", str(MAX_TOKENS_LIMIT),
                        "--max-n", "4", "--max-body-kb", "64") as s:
        yield s
    # The whole session's log: no tracebacks, no library warnings.
    assert "Traceback" not in s.stderr and "Warning" not in s.stderr, s.stderr


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def health(server) -> dict:
    return httpx.get(server.url + "/health").json()["models"]


def ask(client, **kwargs):
    return client.chat.completions.create(messages=[{"role": "user", "content": "What does len do?"}], **kwargs)


def streamed(client, **kwargs) -> tuple[dict[int, str], dict[int, str], list]:
    """(text per choice, finish reason per choice, the usage chunks) of a streamed answer."""
    texts, reasons, usages = {}, {}, []
    for chunk in ask(client, stream=True, **kwargs):
        if chunk.usage:
            usages.append(chunk.usage)
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    return texts, reasons, usages


def test_models_are_listed_by_directory_name(client):
    assert [m.id for m in client.models.list()] == ["sft", "ppo"]


def test_non_streaming_answer_with_n_logprobs_and_usage(client):
    res = ask(client, model="ppo", n=2, max_tokens=8, temperature=1.0, seed=3, logprobs=True, top_logprobs=3)
    assert len(res.choices) == 2 and res.choices[0].message.content != res.choices[1].message.content
    for choice in res.choices:
        assert choice.finish_reason == "length" and choice.message.role == "assistant"
        entries = choice.logprobs.content
        assert len(entries) == 8
        for e in entries:
            tops = [t.logprob for t in e.top_logprobs]
            assert len(tops) == 3 and tops == sorted(tops, reverse=True) and e.logprob <= tops[0] + 1e-6
    assert res.usage.completion_tokens == 16 and res.usage.prompt_tokens > 0
    assert res.usage.total_tokens == res.usage.prompt_tokens + 16
    # Greedy: the picked token is the most likely one, so its logprob is the top candidate's.
    greedy = ask(client, model="ppo", max_tokens=6, temperature=0, logprobs=True, top_logprobs=1)
    assert all(e.logprob == e.top_logprobs[0].logprob for e in greedy.choices[0].logprobs.content)


def test_a_seed_gives_the_same_answer_streamed_or_not_and_choice_i_uses_seed_plus_i(client):
    settings = {"model": "ppo", "max_tokens": 12, "temperature": 1.0, "top_p": 0.9}
    whole = ask(client, seed=7, **settings).choices[0].message.content
    texts, reasons, usages = streamed(client, seed=7, stream_options={"include_usage": True}, **settings)
    assert texts == {0: whole} and reasons == {0: "length"}
    assert len(usages) == 1 and usages[0].completion_tokens == 12
    pair = ask(client, seed=6, n=2, **settings).choices
    assert pair[1].message.content == whole  # choice 1 of seed 6 draws with seed 7


def test_stop_strings_cut_the_answer_streamed_and_not(client):
    settings = {"model": "ppo", "max_tokens": 24, "temperature": 0}
    greedy = ask(client, **settings).choices[0].message.content
    k = next(k for k in range(4, len(greedy) - 3) if greedy.find(greedy[k:k + 3]) == k
             and "\ufffd" not in greedy[k:k + 3])
    stop = greedy[k:k + 3]
    res = ask(client, stop=[stop, "never seen \u2603"], **settings).choices[0]
    assert res.message.content == greedy[:k] and res.finish_reason == "stop"
    texts, reasons, _ = streamed(client, stop=stop, **settings)
    assert texts == {0: greedy[:k]} and reasons == {0: "stop"}


def test_the_page_extension_shows_probabilities_before_and_after_temperature(server):
    body = {"model": "ppo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "temperature": 0.5, "stream": True, "show_probs": 3}
    cards = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                cards += [c["candidates"] for c in json.loads(line[6:])["choices"] if "candidates" in c]
    assert len(cards) == 4
    for cand in cards:
        assert sum(c["picked"] for c in cand) == 1
        first, second = cand[0], cand[1]
        assert first["p"] >= second["p"]
        # After temperature T, p is proportional to p_model^(1/T): the ratio of two candidates squares at T=0.5.
        assert first["p_sampled"] / second["p_sampled"] == pytest.approx((first["p"] / second["p"]) ** 2, rel=1e-3)


BAD_REQUESTS = [  # (what, body or raw bytes, status, the parameter named)
    ("not JSON", b"{model: sft", 400, None),
    ("no messages", {"messages": None}, 400, "messages"),
    ("unknown role", {"model": "sft", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("temperature too high", {"temperature": 5}, 400, "temperature"),
    ("top_p of zero", {"top_p": 0}, 400, "top_p"),
    ("max_tokens above the server's limit", {"max_tokens": MAX_TOKENS_LIMIT + 1}, 400, "max_tokens"),
    ("n above the limit", {"n": 99}, 400, "n"),
    ("top_logprobs without logprobs", {"top_logprobs": 2}, 400, "top_logprobs"),
    ("five stop strings", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("a seed that is text", {"seed": "abc"}, 400, "seed"),
    ("an unsupported penalty", {"presence_penalty": 1.0}, 400, "presence_penalty"),
    ("an unknown model", {"model": "gpt-4"}, 404, "model"),
    ("a prompt over the context", {"messages": [{"role": "user", "content": "word " * 400}]}, 413, "messages"),
    ("a body over the size limit", {"messages": [{"role": "user", "content": "x" * 70_000}]}, 413, None),
]


@pytest.mark.parametrize("what,body,status,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_openai_style_errors_naming_the_parameter(server, what, body, status, param):
    if isinstance(body, dict):
        body = json.dumps({"model": "sft", "messages": [{"role": "user", "content": "hi"}], **body}).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["param"] == param


def test_wrong_paths_and_methods_are_json_errors_and_the_server_keeps_answering(server, client):
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["message"].startswith("GET /v1/nothing")
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    assert ask(client, model="sft", max_tokens=3).choices[0].finish_reason in ("stop", "length")


def wait_until_dropped(server, before: dict) -> dict:
    deadline = time.time() + 10
    while time.time() < deadline and (health(server)["ppo"]["active"] or
                                      health(server)["ppo"]["disconnected"] == before["disconnected"]):
        time.sleep(0.05)
    after = health(server)["ppo"]
    assert after["active"] == 0 and after["disconnected"] == before["disconnected"] + 1
    time.sleep(0.3)
    assert health(server)["ppo"]["tokens"] == after["tokens"] < before["tokens"] + MAX_TOKENS_LIMIT // 2
    return after


def test_a_client_that_leaves_stops_its_generation_streamed_or_not(server):
    before = health(server)["ppo"]
    body = {"model": "ppo", "messages": [{"role": "user", "content": "go on"}], "max_tokens": MAX_TOKENS_LIMIT,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 6:
                break  # leaving the block closes the connection
    before = wait_until_dropped(server, before)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
        httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=1.0)
    wait_until_dropped(server, before)


def test_32_concurrent_streaming_clients_for_ten_seconds_get_no_errors_and_share_steps(server):
    before = health(server)["ppo"]
    deadline = time.time() + 10
    done, errors = [], []
    body = {"model": "ppo", "messages": [{"role": "user", "content": "tell me"}], "max_tokens": 16,
            "stream": True, "stream_options": {"include_usage": True}}

    def client_loop():
        with httpx.Client(timeout=30) as http:
            while time.time() < deadline:
                try:
                    with http.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
                        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
                    assert r.status_code == 200 and events[-1] == "[DONE]"
                    finish = [c["finish_reason"] for e in events[1:-2] for c in json.loads(e)["choices"]]
                    assert finish[-1] in ("stop", "length") and not any(finish[:-1])
                    done.append(json.loads(events[-2])["usage"]["completion_tokens"])
                except Exception as e:  # counted, reported below
                    errors.append(repr(e))

    threads = [threading.Thread(target=client_loop) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert len(done) >= 32
    after = health(server)["ppo"]
    tokens, steps = after["tokens"] - before["tokens"], after["steps"] - before["steps"]
    assert tokens == sum(done) and all(1 <= n <= 16 for n in done)
    assert tokens / steps > 4  # many answers advanced per forward: batched, not one at a time


def test_an_address_beyond_localhost_warns_an_api_key_guards_v1_and_a_full_queue_gets_429(tiny_lm_dir, tmp_path):
    _, ppo = served_models(tiny_lm_dir, tmp_path)
    body = {"model": "ppo", "messages": [{"role": "user", "content": "x"}], "max_tokens": MAX_TOKENS_LIMIT,
            "temperature": 0, "stream": True}  # greedy: the endless model's answers run to max_tokens
    key = {"Authorization": "Bearer s3cret"}
    with running_server("--model", str(ppo), "--max-batch", "1", "--max-waiting", "1", "--max-tokens",
                        str(MAX_TOKENS_LIMIT), host="127.0.0.2", env={"SERVE_API_KEY": "s3cret"}) as s:
        refused = httpx.get(s.url + "/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(s.url + "/v1/models", headers=key).status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200  # the page and health need no key
        with httpx.Client(headers=key, timeout=30) as http:
            with http.stream("POST", s.url + "/v1/chat/completions", json=body) as running:
                first = running.iter_lines()  # kept: a dropped line iterator closes the response
                next(first)
                with http.stream("POST", s.url + "/v1/chat/completions", json=body) as queued:
                    second = queued.iter_lines()
                    next(second)
                    busy = http.post(s.url + "/v1/chat/completions", json={**body, "stream": False})
                    assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
                    assert busy.headers["retry-after"]
            ok = http.post(s.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3})
            assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"
    assert "WARNING: listening on 127.0.0.2" in s.stderr
