"""Feedback on the chat page, in headless Chromium against a real served tiny model: a person asks for
alternatives to an answer and ranks them with the keyboard (a tie included), picks the better of two
models' answers, rates an answer, and reloads the page; the preference store, read back with its own
reader (data/feedback.py), holds exactly what the person pressed. With feedback off the page says so and
offers nothing that would be lost."""

import json
import re

import pytest
from serve_fixtures import HAVE_BROWSER, NO_BROWSER, ROOT, headless_chromium, running_server, served_models

from data.feedback import read_store
from pipeline.config.schema import RankSection

PAGE_SCRIPT = ROOT / "apps/serve/static/feedback.js"


def test_alternatives_are_sampled_as_the_rank_stage_samples():
    """The page cannot read the run's config, so it carries the rank stage's defaults: they must not drift."""
    found = re.search(r"const RANK_SAMPLING = (\{.*?\});", PAGE_SCRIPT.read_text())
    assert found, "feedback.js no longer defines RANK_SAMPLING"
    sampling = json.loads(re.sub(r"(\w+):", r'"\1":', found.group(1)))
    rank = RankSection()
    assert sampling == {"temperatures": rank.temperatures, "max_tokens": rank.max_new_tokens, "top_p": 1}


@pytest.fixture(scope="module")
def browser():
    if not HAVE_BROWSER:
        pytest.skip(NO_BROWSER)
    with headless_chromium() as driver:
        yield driver


def content(element) -> str:
    """The answer text in an element, exactly (Selenium's .text trims and folds whitespace)."""
    return element.find_element("css selector", ".text").get_attribute("textContent")


class Page:
    """The chat page as a person uses it: by what is on screen, buttons and keys."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url, self.by = driver, url, By
        self.keys = lambda *keys: ActionChains(driver).send_keys(*keys).perform()
        self.wait = WebDriverWait(driver, 60).until

    def open(self):
        self.driver.get(self.url + "/")
        self.wait(lambda d: self.find("body", "tag name").get_attribute("data-ready") == "true")
        self.wait(lambda d: not self.text("#feedback-note").startswith("Asking"))

    def find(self, selector, how="css selector"):
        return self.driver.find_element(how, selector)

    def all(self, selector, within=None):
        return (within or self.driver).find_elements(self.by.CSS_SELECTOR, selector)

    def text(self, selector):
        return self.find(selector).text

    def say(self, message: str):
        """Send a message and wait until every column's answer has ended (its feedback buttons are there)."""
        before = len(self.all(".feedback-actions"))
        self.find("#message").send_keys(message)
        self.find("#send").click()
        columns = len(self.all(".column"))
        self.wait(lambda d: len(self.all(".feedback-actions")) == before + columns)

    def last_answer(self, column: int = 0):
        return self.all(".message.assistant", self.all(".column")[column])[-1]

    def alternatives(self, column: int, k: int):
        field = self.find("#alt-k")
        field.clear()
        field.send_keys(str(k))
        self.all("button.ask-alternatives", self.last_answer(column))[0].click()
        self.wait(lambda d: self.text("#ranking-notice").startswith(("Press", "Fewer", "Feedback is off")))
        return [content(card) for card in self.all(".alt")]


@pytest.mark.slow  # two models served, about 20 s on two shared cores
def test_person_ranks_alternatives_picks_and_rates_and_the_store_holds_it(tiny_lm_dir, tmp_path, browser):
    sft, ppo = served_models(tiny_lm_dir, tmp_path)  # ppo never ends an answer early: K distinct answers
    store = tmp_path / "prefs"
    with running_server("--model", str(sft), "--compare", str(ppo), "--feedback-dir", str(store)) as server:
        page = Page(browser, server.url)
        page.open()
        note = page.text("#feedback-note")
        assert "recorded" in note and str(store / "feedback.jsonl") in note

        page.find("#max-tokens").clear()
        page.find("#max-tokens").send_keys("12")
        page.say("What does len do?")
        texts = page.alternatives(column=1, k=3)
        assert len(texts) == 3 and len(set(texts)) == 3 and all(texts)
        # Side by side, numbered 1..3, at the rank stage's first three temperatures.
        assert [c.text for c in page.all(".alt .key")] == ["1", "2", "3"]
        assert [c.text for c in page.all(".alt .alt-label")] == ["T 0.7", "T 0.9", "T 1.1"]
        assert page.find("#ranking-save").get_attribute("disabled")

        browser.save_screenshot(str(tmp_path / "alternatives.png"))
        page.keys("2", "=", "3")  # answer 2 best, 3 tied with it; 1, the only one left, falls last
        assert [c.text for c in page.all(".alt .place")] == ["2nd", "1st (tied)", "1st (tied)"]
        assert page.text("#ranking-order") == "Your ranking, best first: 2 = 3 > 1"
        browser.save_screenshot(str(tmp_path / "ranked.png"))
        page.keys("\ue007")  # Enter saves
        page.wait(lambda d: not page.find("#ranking").is_displayed())
        assert re.search(r"saved as fb-\w+ in " + re.escape(str(store)), page.text("#status"))

        stored = read_store(store)
        assert len(stored.rankings) == 1 and not stored.unreadable_lines
        ranked = stored.rankings[0]
        assert ranked["prompt"] == [{"role": "user", "content": "What does len do?"}]
        groups = [[ranked["responses"][i] for i in group] for group in ranked["ranking"]]
        assert [sorted(g) for g in groups] == [sorted([texts[1], texts[2]]), [texts[0]]]
        by_text = {r: a for r, a in zip(ranked["responses"], ranked["answers"])}
        assert [by_text[t]["sampling"]["temperature"] for t in texts] == [0.7, 0.9, 1.1]
        assert {a["model"] for a in ranked["answers"]} == {"ppo"} and ranked["labeler"] == "person@serve"
        assert "all_bad" not in ranked

        # The better of the two models' answers: 2 (ppo) over 1 (sft), all bad marked, with a reason.
        answers = [content(page.last_answer(c)) for c in (0, 1)]
        page.all("button.pick", page.last_answer(0))[0].click()
        page.wait(lambda d: page.text("#ranking-notice").startswith("Press"))
        page.find("#reason").send_keys("both ramble")
        page.find("#ranking-title").click()  # out of the reason box: keys rank again
        page.keys("2", "x", "\ue007")
        page.wait(lambda d: not page.find("#ranking").is_displayed())
        pick = read_store(store).rankings[-1]
        assert [pick["responses"][i] for i in pick["ranking"]] == [answers[1], answers[0]]
        assert [pick["answers"][i]["model"] for i in pick["ranking"]] == ["ppo", "sft"]
        assert pick["all_bad"] is True and pick["reason"] == "both ramble"

        # A reload while alternatives are open leaves a working page: chat, rate, and the rating is stored.
        page.alternatives(column=1, k=2)
        browser.refresh()
        page.open()
        assert not page.find("#ranking").is_displayed()
        page.say("And str.upper?")
        answer = page.last_answer(0)
        page.all("button.rate.good", answer)[0].click()
        page.wait(lambda d: "saved as fb-" in answer.text)
        ratings = read_store(store).ratings
        assert len(ratings) == 1 and ratings[0]["good"] is True
        assert ratings[0]["responses"] == [content(answer)]
        assert ratings[0]["prompt"] == [{"role": "user", "content": "And str.upper?"}]
        assert len(read_store(store).rankings) == 2  # the alternatives left by the reload stored nothing
    assert "Traceback" not in server.stderr


@pytest.mark.slow  # a server of its own, about 15 s on two shared cores, most of it the server starting
def test_with_feedback_off_the_page_says_so_and_offers_no_saving(tiny_lm_dir, tmp_path, browser):
    sft, _ = served_models(tiny_lm_dir, tmp_path)
    with running_server("--model", str(sft), "--no-feedback") as server:
        page = Page(browser, server.url)
        page.open()
        assert page.text("#feedback-note").startswith("Feedback is off, so nothing you do here is recorded. "
                                                      "The server says: \u201cfeedback: off (--no-feedback)\u201d.")
        page.say("What does len do?")
        assert not [b for b in page.all(".feedback-actions button") if b.is_displayed() and b.text != "alternatives"]
        page.alternatives(column=0, k=2)
        assert not page.find("#ranking-save").is_displayed()
        page.keys("\ue00c")  # Escape closes
        assert not page.find("#ranking").is_displayed()
    assert "Traceback" not in server.stderr
