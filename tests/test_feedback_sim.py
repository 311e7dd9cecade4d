"""`python -m apps.serve.feedback_sim`: a simulated person ranks a running server's answers through the API
(n=K completions, the rank stage's gold labeler, POST /v1/feedback), so the loop serve -> rank -> reward
runs without a person. At noise 0 its rankings are the gold order; a server it cannot reach is named in
one line."""

import json

import pytest
from serve_fixtures import running_server, served_models

from apps.serve.feedback_sim import main
from data.feedback import read_store
from data.gold import gold_score

GOLD = "Return the number of items in a container."


def test_the_simulated_person_ranks_k_answers_per_prompt_in_the_gold_order(tiny_lm_dir, tmp_path, capsys):
    sft, _ = served_models(tiny_lm_dir, tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "gold": GOLD}) + "\n"
                               for q in ("What does len do?", "What is len?", "Explain len.")))
    store = tmp_path / "store"
    with running_server("--model", str(sft), "--feedback-dir", str(store)) as server:
        assert main(["--url", server.url, "--prompts", str(prompts), "--rankings", "2", "--k", "3",
                     "--max-tokens", "12", "--noise", "0"]) == 0
    assert "stored 2 rankings in" in capsys.readouterr().out
    rankings = read_store(store).rankings
    assert len(rankings) == 2 and {r["labeler"] for r in rankings} == {"simulated@serve"}
    for r in rankings:
        scores = [round(gold_score(t, GOLD), 6) for t in r["responses"]]
        groups = [g if isinstance(g, list) else [g] for g in r["ranking"]]
        placed = [[scores[i] for i in g] for g in groups]
        assert all(len(set(g)) == 1 for g in placed)  # answers the metric ties are tied
        assert [g[0] for g in placed] == sorted({s for s in scores}, reverse=True)  # best first, at noise 0


def test_a_server_that_is_not_there_is_named_in_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text(json.dumps({"prompt": "What does len do?", "gold": GOLD}) + "\n")
        with pytest.raises(SystemExit) as e:
            main(["--url", f"http://127.0.0.1:{sock.getsockname()[1]}", "--prompts", str(prompts)])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:" in err and "make serve" in err and "Traceback" not in err
