"""The terminal chat: one-shot and piped multi-turn use, commands, greedy determinism, Ctrl-C,
and refusing directories that hold no chat model."""

import io
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from eval_fixtures import lively_copy, tiny_reward_model
from transformers import AutoModelForCausalLM

from apps.chat import Chat, Sampling, load_chat_model, main
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def chat_cmd(model, *args):
    return [sys.executable, "-m", "apps.chat", "--model", str(model), *args]


def run_chat(model, *args, stdin="", timeout=60):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(chat_cmd(model, *args), input=stdin, capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def model_dir(tiny_lm_dir, tmp_path_factory):
    return lively_copy(tiny_lm_dir, tmp_path_factory.mktemp("chat_model"), seed=5)


@pytest.fixture(scope="module")
def endless_dir(tiny_lm_dir, tmp_path_factory):
    """A model whose greedy answers never end (EOS gets logit 0, below the best of the other
    tokens) and whose context is long: an answer that runs until Ctrl-C stops it."""
    d = lively_copy(tiny_lm_dir, tmp_path_factory.mktemp("endless"), seed=6, max_positions=1 << 20)
    model = AutoModelForCausalLM.from_pretrained(d)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id] = 0
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_chat_model(str(model_dir), torch.device("cpu"))


def one_shot(capsys, model, *args) -> tuple[str, str]:
    main(["--model", str(model), *args])
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_one_shot_prompt_prints_one_answer_and_temperature_zero_repeats_it(model_dir, capsys):
    args = ("--prompt", "What does json.dumps do?", "--temperature", "0", "--max-new-tokens", "12")
    first, _ = one_shot(capsys, model_dir, *args)
    second, _ = one_shot(capsys, model_dir, *args)
    assert first.strip() and first == second


def test_piped_conversation_with_commands(model_dir, capsys):
    greedy_hello, _ = one_shot(capsys, model_dir, "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "10")
    script = "/temp 0\n/max 10\nHello\nAnd then?\n/reset\nHello\n/top_p 2\n/quit\nnever answered\n"
    res = run_chat(model_dir, "--temperature", "1.5", stdin=script)
    assert res.returncode == 0, res.stderr
    assert "temperature 0 (greedy)" in res.stderr and "conversation cleared" in res.stderr
    assert "/top_p needs a number between 0.0 and 1.0" in res.stderr
    # No library noise in the conversation, e.g. transformers' "`past_key_values` is deprecated ... Use `cache`".
    assert "Warning" not in res.stderr and "deprecated" not in res.stderr, res.stderr
    # Greedy, and the conversation restarted by /reset: "Hello" gets the one-shot answer both times.
    assert greedy_hello.strip() and res.stdout.count(greedy_hello) == 2
    assert res.stdout.startswith(greedy_hello) and res.stdout.endswith(greedy_hello)  # nothing after /quit


def test_show_probs_prints_the_candidates_reshaped_by_temperature(model_dir, capsys):
    _, err = one_shot(capsys, model_dir, "--prompt", "Hi", "--temperature", "0.5", "--max-new-tokens", "4",
                      "--seed", "0", "--show-probs", "2")
    assert "softmax(logits/0.5)" in err
    assert "token 1: picked" in err and "token 2: picked" in err and "token 3" not in err


def test_chat_keeps_the_conversation_and_drops_the_oldest_turns_when_the_context_is_full(loaded):
    model, tok = loaded
    out = io.StringIO()
    chat = Chat(model, tok, Sampling(temperature=0, max_new_tokens=5), seed=0, out=out, err=io.StringIO())
    chat.reply("first question")
    chat.reply("second question")
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert "first question" in tok.decode(chat.prompt_ids()[0])
    chat.context = 40  # a short window: the first exchange no longer fits
    chat.history.append({"role": "user", "content": "third question"})
    ids, budget = chat.prompt_ids()
    assert len(ids) + budget <= 40 and "first question" not in tok.decode(ids)
    assert tok.decode(ids).rstrip().endswith("<|assistant|>")
    chat.command("/reset")
    assert chat.history == []


def test_commands_change_sampling_and_reject_bad_values(loaded):
    model, tok = loaded
    err = io.StringIO()
    chat = Chat(model, tok, Sampling(), seed=0, out=io.StringIO(), err=err)
    assert chat.command("/temp 1.3") and chat.sampling.temperature == 1.3
    assert chat.command("/top_k 7") and chat.sampling.top_k == 7
    assert chat.command("/max 9") and chat.sampling.max_new_tokens == 9
    assert chat.command("/top_k -1") and chat.sampling.top_k == 7
    assert chat.command("/temp nan") and chat.sampling.temperature == 1.3  # nan passes every comparison
    assert chat.command("/nonsense") and "unknown command" in err.getvalue()
    assert chat.command("/quit") is False


def test_directories_that_hold_no_chat_model_are_refused(tmp_path, tiny_lm_dir):
    with pytest.raises(UserError, match="not a model directory"):
        load_chat_model(str(tmp_path), torch.device("cpu"))
    with pytest.raises(UserError, match="does not exist"):
        load_chat_model(str(tmp_path / "missing"), torch.device("cpu"))
    rm = tiny_reward_model(tiny_lm_dir, tmp_path / "rm")
    with pytest.raises(UserError, match="reward model"):
        load_chat_model(str(rm), torch.device("cpu"))
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path), "--prompt", "hi"])
    assert exit_.value.code == 2


def _read_some(fd, timeout):
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 4096) if ready else b""


def test_ctrl_c_stops_the_answer_not_the_program(endless_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(chat_cmd(endless_dir, "--temperature", "0", "--max-new-tokens", "100000"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        proc.stdin.write(b"Tell me everything\n")
        proc.stdin.flush()
        streamed = _read_some(proc.stdout.fileno(), 60)
        assert streamed, "the answer should start streaming"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(b"/max 3\n/probs 1\nAnd now?\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert err.count(b"[stopped") == 1
    # Still there after Ctrl-C: it took the next commands and answered the next question.
    assert b"max 3 tokens" in err and b"token 1: picked" in err
