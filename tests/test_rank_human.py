"""A person ranks the model's answers (issue 12, requirement 3).

Specification: every ranking is appended to the labels file at once and survives a killed server; a re-run
resumes at the next unranked prompt and counts the earlier ones; the latest ranking per (prompt, labeler)
wins, so going back re-ranks; bad submissions get a 4xx and change nothing; the page works in a real
headless Chromium (keys, drag, ties, all bad, back, finish) and the terminal mode with typed input.
"""

import http.client
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data.labels import BadRanking, agreement, append_label, kendall_tau, ranking_groups, read_labels
from pipeline.listen import is_loopback
from stages.rank.human import label_in_browser, label_in_terminal
from stages.rank.labels import label_record
from stages.rank.session import LabelingSession, display_order
from stages.rank.web import MAX_BODY_BYTES

ROOT = Path(__file__).resolve().parents[1]
OBJECTS = ["len", "zip", "sorted", "enumerate", "round"]


def candidate(n: int, k: int = 4) -> dict:
    name = OBJECTS[n]
    return {"prompt_id": f"p{n:06d}", "prompt": f"What does {name} do?",
            "responses": [f"{name}: answer {'ABCDEFGH'[i]}, sampled at temperature {0.7 + 0.2 * i:.1f}" for i in range(k)],
            "temperatures": [0.7 + 0.2 * i for i in range(k)], "logprobs": [-10.0 - i for i in range(k)],
            "gold": f"Documented summary of {name}.", "policy": "runs/secret-policy/sft"}


CANDIDATES = [candidate(n) for n in range(5)]


# ---------------------------------------------------------------- the labels file and the ranking format

def test_a_ranking_is_a_strict_order_or_tied_groups_of_every_answer_once():
    assert ranking_groups([2, 0, 3, 1], 4) == [[2], [0], [3], [1]]
    assert ranking_groups([[2], [0, 3], [1]], 4) == [[2], [0, 3], [1]]
    for bad, why in [([0, 0, 1, 2], "more than once"), ([0, 1, 2], "missing: 3"), ([0, 1, 2, 4], "out of range"),
                     ([[0, 1], [1], [2, 3]], "more than once"), (["0", 1, 2, 3], "integers"), ([], "non-empty"),
                     ([[], 0, 1, 2, 3], "empty tie group"), ({"best": 0}, "non-empty list"), ([True, 0, 1, 2], "integers")]:
        with pytest.raises(BadRanking, match=why):
            ranking_groups(bad, 4)


def test_labels_append_one_line_each_the_latest_per_prompt_and_labeler_wins_and_a_torn_line_is_counted(tmp_path):
    path = tmp_path / "labels" / "team.jsonl"
    first = label_record(CANDIDATES[0], [[0], [1], [2], [3]], labeler="alice")
    append_label(path, first)
    append_label(path, label_record(CANDIDATES[0], [[3], [2], [1, 0]], labeler="bob"))
    append_label(path, label_record(CANDIDATES[0], [[1], [0], [2], [3]], labeler="alice", all_bad=True))  # re-rank
    with open(path, "a") as f:
        f.write('{"prompt_id": "p000001", "respo')  # a kill mid-write leaves a torn last line
    append_label(path, label_record(CANDIDATES[1], [[2], [0], [1], [3]], labeler="alice"))

    labels = read_labels(path)
    assert labels.bad_lines == [4]
    assert [(r["prompt_id"], r["labeler"], r["ranking"]) for r in labels.records] == [
        ("p000000", "bob", [[3], [2], [1, 0]]), ("p000000", "alice", [1, 0, 2, 3]), ("p000001", "alice", [2, 0, 1, 3])]
    alice = labels.records[1]
    assert alice["all_bad"] is True and alice["labeler_kind"] == "human" and alice["time"].endswith("Z")
    assert alice["responses"] == CANDIDATES[0]["responses"] and alice["prompt"] == CANDIDATES[0]["prompt"]
    lines = path.read_text().splitlines()  # the torn line stays as it was; the next record starts a new line
    assert lines[3] == '{"prompt_id": "p000001", "respo' and json.loads(lines[4])["prompt_id"] == "p000001"


def test_kendall_tau_and_agreement_between_labelers_on_prompts_ranked_by_more_than_one():
    order = [[0], [1], [2], [3]]
    assert kendall_tau(order, order) == 1.0
    assert kendall_tau(order, [[3], [2], [1], [0]]) == -1.0
    assert kendall_tau(order, [[0, 1], [2], [3]]) == pytest.approx(5 / 30 ** 0.5)  # tau-b: the tied pair counts for neither
    assert kendall_tau(order, [[0, 1, 2, 3]]) is None

    def rec(n, labeler, ranking, responses=None):
        r = label_record(CANDIDATES[n], ranking_groups(ranking, 4), labeler=labeler)
        return {**r, "responses": responses or r["responses"]}

    records = [rec(0, "alice", [0, 1, 2, 3]), rec(0, "bob", [0, 1, 2, 3]),        # agree: +1
               rec(1, "alice", [0, 1, 2, 3]), rec(1, "bob", [3, 2, 1, 0]),        # disagree: -1
               rec(2, "alice", [0, 1, 2, 3]), rec(2, "carol", [0, 1, 3, 2]),      # +4/6
               rec(3, "alice", [0, 1, 2, 3]),                                     # one labeler: no agreement to measure
               rec(4, "alice", [0, 1, 2, 3]), rec(4, "bob", [3, 2, 1, 0], ["other", "answers", "to", "it"])]
    result = agreement(records)
    assert result["prompts"] == 3
    assert result["mean_tau"] == pytest.approx((1 - 1 + 4 / 6) / 3)
    assert result["ci_low"] < result["mean_tau"] < result["ci_high"]
    assert result["pair_prompts"] == 3 and result["pair_agreement"] == pytest.approx((1 + 0 + 5 / 6) / 3)
    assert result["by_pair"] == {"alice~bob": {"prompts": 2, "mean_tau": 0.0, "pair_agreement": 0.5},
                                 "alice~carol": {"prompts": 1, "mean_tau": pytest.approx(4 / 6),
                                                 "pair_agreement": pytest.approx(5 / 6)}}


def test_answers_show_in_a_random_order_fixed_per_seed_and_prompt():
    orders = {pid: display_order(0, pid, 4) for pid in (c["prompt_id"] for c in CANDIDATES)}
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) > 1  # not one fixed shuffle for every prompt
    assert orders == {pid: display_order(0, pid, 4) for pid in orders}
    assert any(display_order(1, pid, 4) != o for pid, o in orders.items())


def test_a_multi_turn_prompt_shows_as_its_turns_and_its_label_keeps_the_messages(tmp_path):
    turns = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What does zip do?"}]
    chat = {**CANDIDATES[1], "messages": turns}
    del chat["prompt"]
    session = LabelingSession([chat], tmp_path / "alice.jsonl", labeler="alice")
    view = session.view(chat["prompt_id"])
    assert view["turns"] == turns and [a["index"] for a in view["answers"]] == display_order(0, chat["prompt_id"], 4)
    assert [a["text"] for a in view["answers"]] == [chat["responses"][a["index"]] for a in view["answers"]]
    assert session.submit(chat["prompt_id"], [3, 2, 1, 0])["messages"] == turns
    assert read_labels(tmp_path / "alice.jsonl").records[0]["messages"] == turns


def test_resume_counts_a_prompt_only_when_this_labeler_ranked_these_same_answers(tmp_path):
    path = tmp_path / "alice.jsonl"
    old_round = {**CANDIDATES[0], "responses": ["an older", "round's", "answers", "here"]}
    append_label(path, label_record(old_round, [[0], [1], [2], [3]], labeler="alice"))
    append_label(path, label_record(CANDIDATES[1], [[0], [1], [2], [3]], labeler="alice"))
    append_label(path, label_record(CANDIDATES[2], [[0], [1], [2], [3]], labeler="bob"))
    session = LabelingSession(CANDIDATES, path, labeler="alice")
    assert session.progress() == {"ranked": 1, "total": 5, "remaining": 4}
    assert session.next_unranked() == "p000000" and session.next_unranked(after="p000000") == "p000002"
    assert any("other answers" in note for note in session.notes())


def test_the_page_is_served_on_loopback_unless_asked():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    every_interface = str(ipaddress.ip_address(0))  # the unspecified address: binds all interfaces
    assert not is_loopback(every_interface) and not is_loopback("192.168.1.20")


# ---------------------------------------------------------------- the server refuses bad submissions

def _post(url: str, body: bytes, content_type="application/json", chunked=False, host_header=None):
    host, port = url.split("//")[1].strip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": content_type, **({"Host": host_header} if host_header else {})}
    if chunked:
        conn.request("POST", "/api/rank", body=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                     headers=headers, encode_chunked=True)
    else:
        conn.request("POST", "/api/rank", body=body, headers=headers)
    response = conn.getresponse()
    status, data = response.status, json.loads(response.read() or b"{}")
    conn.close()
    return status, data


def test_bad_submissions_get_a_4xx_with_a_clear_message_change_nothing_and_the_server_keeps_serving(tmp_path):
    labels = tmp_path / "labels" / "alice.jsonl"
    messages, result = [], {}
    thread = threading.Thread(target=lambda: result.update(label_in_browser(
        CANDIDATES, labels, labeler="alice", open_message=messages.append)), daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not any("http://" in m for m in messages) and time.time() < deadline:
        time.sleep(0.05)
    url = next(m for m in messages if "http://" in m).split("open ")[1].split()[0]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")

    good = {"prompt_id": "p000000", "ranking": [1, 0, 2, 3]}
    padded = json.dumps({**good, "note": "x" * MAX_BODY_BYTES}).encode()
    bad = [
        (json.dumps({**good, "ranking": [0, 0, 1, 2]}).encode(), {}, 422, "appears more than once"),  # not a permutation
        (json.dumps({**good, "prompt_id": "p999999"}).encode(), {}, 404, "unknown prompt_id"),
        (json.dumps({**good, "ranking": [0, 1, 2]}).encode(), {}, 422, "this prompt has 4"),           # wrong K
        (padded, {}, 413, "too large"),
        (padded, {"chunked": True}, 413, "too large"),                                           # no length declared
        (b'{"prompt_id": "p000000", "ranking": [1, 0,', {}, 400, "not valid JSON"),
        (b"[1, 0, 2, 3]", {}, 400, "must be a JSON object"),
        (json.dumps(good).encode(), {"content_type": "text/plain"}, 415, "application/json"),
        (json.dumps({**good, "all_bad": "yes"}).encode(), {}, 422, "all_bad"),
        (json.dumps({"ranking": [1, 0, 2, 3]}).encode(), {}, 422, "expected"),
        (json.dumps(good).encode(), {"host_header": "attacker.example:80"}, 400, "unexpected Host"),  # DNS rebinding
    ]
    for body, options, status, phrase in bad:
        got, data = _post(url, body, **options)
        assert (got, phrase in data.get("error", "")) == (status, True), (body[:80], got, data)
        assert not labels.exists()  # nothing written

    assert _post(url, json.dumps(good).encode()) == (200, {"saved": True, "next": "p000001", "done": False,
                                                           "progress": {"ranked": 1, "total": 5, "remaining": 4}})
    assert [r["ranking"] for r in read_labels(labels).records] == [[1, 0, 2, 3]]
    conn = http.client.HTTPConnection(url.split("//")[1].strip("/").split(":")[0], int(url.rstrip("/").rsplit(":", 1)[1]))
    conn.request("POST", "/api/finish", body=b"{}", headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    thread.join(timeout=10)
    assert not thread.is_alive() and result == {"ranked": 1, "remaining": 4, "url": url}


# ---------------------------------------------------------------- the page in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver here: apt-get install -y chromium chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


SERVE = """
import json, sys
from pathlib import Path
from stages.rank.human import label_in_browser
out = label_in_browser(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), labeler="alice",
                       open_message=lambda m: print(m, flush=True))
print("RESULT", json.dumps(out), flush=True)
"""


def start_server(tmp_path: Path, labels: Path):
    """The labeler in its own process (so it can be killed for real); returns (process, url)."""
    cands = tmp_path / "candidates.json"
    cands.write_text(json.dumps(CANDIDATES))
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(cands), str(labels)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in proc.stdout:
        if "open http://" in line:
            return proc, line.split("open ")[1].split()[0]
    raise AssertionError(f"the labeler printed no URL (exit {proc.wait()})")


def page(driver):
    """What the person sees: prompt id, progress, and per on-screen number the original answer index,
    found from the answer's text."""
    from selenium.webdriver.common.by import By

    pid = driver.find_element(By.ID, "prompt-id").text
    responses = next(c["responses"] for c in CANDIDATES if c["prompt_id"] == pid)
    index_of_key = {int(card.get_attribute("data-key")): responses.index(card.find_element(By.CLASS_NAME, "text").text)
                    for card in driver.find_elements(By.CSS_SELECTOR, "#answers .answer")}
    return pid, driver.find_element(By.ID, "progress-text").text, index_of_key


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def showing(pid: str):
    from selenium.webdriver.common.by import By

    return lambda d: d.find_element(By.ID, "prompt-id").text == pid and d.find_elements(By.CSS_SELECTOR, ".answer")


def press(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(driver).send_keys(key).perform()


def test_page_ranks_three_prompts_by_keys_drag_and_tie_and_a_killed_server_loses_none(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    labels = tmp_path / "labels" / "alice.jsonl"
    proc, url = start_server(tmp_path, labels)
    try:
        browser.get(url)
        wait_for(browser, showing("p000000"), "the first prompt")
        _, progress, key = page(browser)
        assert progress == "0 of 5 ranked · 5 left"
        assert "What does len do?" in browser.find_element(By.ID, "prompt").text
        assert "secret-policy" not in browser.page_source and "temperature 0.7" in browser.page_source
        press(browser, "3", "1", "4", Keys.ENTER)  # the answer numbered 2 falls into last place
        expected = {"p000000": [key[3], key[1], key[4], key[2]]}
        wait_for(browser, showing("p000001"), "the second prompt after saving the first")
        assert read_labels(labels).records[-1]["ranking"] == expected["p000000"]  # on disk at once

        _, _, key = page(browser)
        cards = browser.find_elements(By.CSS_SELECTOR, "#answers .answer")
        handle = cards[3].find_element(By.CLASS_NAME, "handle")  # drag the 4th answer above the 1st
        ActionChains(browser).click_and_hold(handle).move_by_offset(0, -20).move_to_element_with_offset(
            cards[0], 0, -cards[0].size["height"] // 2 + 3).release().perform()
        ranked = browser.find_elements(By.CSS_SELECTOR, "#answers .answer.ranked")
        assert [int(c.get_attribute("data-key")) for c in ranked] == [4, 1, 2, 3]
        press(browser, Keys.ENTER)
        expected["p000001"] = [key[4], key[1], key[2], key[3]]
        wait_for(browser, showing("p000002"), "the third prompt")

        _, _, key = page(browser)
        press(browser, "2", "=", "1", "3", "x", Keys.ENTER)  # 2 and 1 tied best, 4 last; all answers bad
        expected["p000002"] = [[key[2], key[1]], [key[3]], [key[4]]]
        wait_for(browser, showing("p000003"), "the fourth prompt")
        assert browser.find_element(By.ID, "progress-text").text == "3 of 5 ranked · 2 left"
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: only what was appended at once survives
        proc.wait()

    records = read_labels(labels).records
    assert {r["prompt_id"]: r["ranking"] for r in records} == expected
    assert {(r["labeler"], r["labeler_kind"]) for r in records} == {("alice", "human")}
    assert [r.get("all_bad", False) for r in records] == [False, False, True]

    proc, url = start_server(tmp_path, labels)
    try:
        browser.get(url)
        wait_for(browser, showing("p000003"), "the next unranked prompt after a restart")
        assert browser.find_element(By.ID, "progress-text").text == "3 of 5 ranked · 2 left"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_page_goes_back_re_ranks_with_a_tie_skips_and_finish_stops_the_server(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    labels = tmp_path / "labels.jsonl"  # one file shared by two people: only alice's rankings are alice's progress
    for n, who in [(0, "alice"), (1, "alice"), (2, "bob")]:
        append_label(labels, label_record(CANDIDATES[n], [[0], [1], [2], [3]], labeler=who))
    proc, url = start_server(tmp_path, labels)
    try:
        browser.get(url)
        wait_for(browser, showing("p000002"), "alice's first unranked prompt")
        assert browser.find_element(By.ID, "progress-text").text == "2 of 5 ranked · 3 left"

        press(browser, "b")
        wait_for(browser, showing("p000001"), "the previous prompt")
        shown = [int(c.get_attribute("data-index")) for c in browser.find_elements(By.CSS_SELECTOR, ".answer.ranked")]
        assert shown == [0, 1, 2, 3] and "ranked this prompt before" in browser.find_element(By.ID, "notice").text
        _, _, key = page(browser)
        browser.find_element(By.ID, "clear").click()
        press(browser, "4", "=", "2", "1", Keys.ENTER)  # 4 and 2 tied best, then 1, then 3
        wait_for(browser, showing("p000002"), "the next unranked prompt after re-ranking")
        assert browser.find_element(By.ID, "progress-text").text == "2 of 5 ranked · 3 left"  # a re-rank is no new prompt

        press(browser, "b")
        wait_for(browser, showing("p000001"), "back once")
        press(browser, "b")
        wait_for(browser, showing("p000000"), "back twice")
        press(browser, "s")
        wait_for(browser, showing("p000002"), "skip to the next unranked prompt")
        browser.find_element(By.ID, "finish").click()
        wait_for(browser, lambda d: "Saved" in d.find_element(By.ID, "done-title").text, "the finish message")
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert 'RESULT {"ranked": 2, "remaining": 3, "url": "' + url + '"}' in out
    latest = {(r["prompt_id"], r["labeler"]): r["ranking"] for r in read_labels(labels).records}
    assert latest[("p000001", "alice")] == [[key[4], key[2]], [key[1]], [key[3]]]
    assert len(labels.read_text().splitlines()) == 4  # the earlier ranking is kept; the latest wins


# ---------------------------------------------------------------- the terminal mode

def test_terminal_mode_ranks_ties_marks_all_bad_skips_goes_back_and_resumes(tmp_path):
    labels = tmp_path / "alice.jsonl"
    cands = CANDIDATES[:3]
    typed = iter(["1 1 2 3", "5 1 2", "2 1=3 4",   # two refused, then p0 with answers 1 and 3 tied
                  "s",                             # skip p1
                  "x",                             # p2: all bad (no order given: all tied)
                  "b", "b",                        # from p1 back to p2, then to p0
                  "4 3 2",                         # re-rank p0 (answer 1 falls last)
                  "q"])
    printed = []
    result = label_in_terminal(cands, labels, labeler="alice", input_fn=lambda prompt: next(typed),
                               print_fn=lambda *a: printed.append(" ".join(map(str, a))))
    assert result == {"ranked": 2, "remaining": 1}
    text = "\n".join(printed)
    assert "not saved: a number appears twice" in text and "there is no answer 5" in text
    assert "you ranked this before: 2 1=3 4" in text

    def shown_numbers(pid):  # on-screen number -> original answer index, from what was printed
        responses = next(c["responses"] for c in cands if c["prompt_id"] == pid)
        lines = "\n".join(printed).splitlines()
        start = next(i for i, line in enumerate(lines) if pid in line)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("── ")), len(lines))
        return {int(lines[i][1:-1]): responses.index(lines[i + 1].strip())
                for i in range(start, end) if lines[i].startswith("[")}

    n = shown_numbers("p000000")
    latest = {r["prompt_id"]: r for r in read_labels(labels).records}
    assert latest["p000000"]["ranking"] == [n[4], n[3], n[2], n[1]] and "all_bad" not in latest["p000000"]
    assert len(latest["p000002"]["ranking"]) == 1 and sorted(latest["p000002"]["ranking"][0]) == [0, 1, 2, 3]
    assert latest["p000002"]["all_bad"] is True and "p000001" not in latest

    printed.clear()
    again = label_in_terminal(cands, labels, labeler="alice", input_fn=lambda prompt: "q", print_fn=printed.append)
    assert again == {"ranked": 2, "remaining": 1}
    assert any("p000001 · 2 of 3 ranked, 1 left" in line for line in printed)  # resumes at the unranked one

    def closed(prompt):
        raise EOFError  # stdin closed (e.g. piped input ran out): stop cleanly, everything saved stays saved
    assert label_in_terminal(cands, labels, labeler="alice", input_fn=closed, print_fn=printed.append)["ranked"] == 2
