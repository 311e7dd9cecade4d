"""The chat page in headless Chromium: it loads offline (no external resources), a message gets
answers from both served models streamed side by side, and the probability view shows each
token's top candidates before and after temperature. Saves a screenshot in the test's tmp folder."""

import pytest
from serve_fixtures import HAVE_BROWSER, NO_BROWSER, headless_chromium, running_server, served_models

if not HAVE_BROWSER:
    pytest.skip(NO_BROWSER, allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


def test_page_streams_both_models_side_by_side_and_shows_probabilities(tiny_lm_dir, tmp_path, browser):
    sft, ppo = served_models(tiny_lm_dir, tmp_path)
    with running_server("--model", str(sft), "--compare", str(ppo)) as server:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        columns = browser.find_elements(By.CSS_SELECTOR, ".column")
        assert [c.find_element(By.TAG_NAME, "h2").text for c in columns] == ["sft", "ppo"]

        browser.execute_script("const t = document.getElementById('temperature'); t.value = '0.5';"
                               "t.dispatchEvent(new Event('input'));")
        max_tokens = browser.find_element(By.ID, "max-tokens")
        max_tokens.clear()
        max_tokens.send_keys("60")
        browser.find_element(By.ID, "message").send_keys("What does len do?")
        browser.find_element(By.ID, "send").click()

        # Streamed: text appears, and the answer was drawn chunk by chunk as the events arrived.
        answer = columns[1].find_element
        wait.until(lambda d: len(answer(By.CSS_SELECTOR, ".message.assistant .text").text) > 0)
        wait.until(lambda d: "tokens in" in answer(By.CSS_SELECTOR, ".message.assistant .meta").text)
        # The page asks for the 60 tokens it was set to: the answer runs to them ("length"), unless the model
        # ended its turn first ("stop": the end-of-turn tokens of this model keep a small chance under sampling).
        meta = answer(By.CSS_SELECTOR, ".message.assistant .meta").text
        tokens = int(meta.split(" tokens")[0])
        assert (tokens, meta.endswith("length")) == (60, True) or (tokens < 60 and meta.endswith("stop")), meta
        assert int(answer(By.CSS_SELECTOR, ".message.assistant").get_attribute("data-updates")) >= tokens // 2
        wait.until(lambda d: "tokens in" in columns[0].find_element(By.CSS_SELECTOR, ".meta").text)

        cards = columns[1].find_elements(By.CSS_SELECTOR, ".probs .token")
        assert len(cards) == tokens and not cards[0].is_displayed()
        browser.find_element(By.ID, "show-probs").click()
        assert cards[0].is_displayed() and browser.find_element(By.ID, "legend").is_displayed()
        first = cards[0].find_elements(By.CSS_SELECTOR, ".cand")
        assert len(first) >= 5 and len(cards[0].find_elements(By.CSS_SELECTOR, ".cand.picked")) == 1
        assert "\u2192" in first[0].find_element(By.CSS_SELECTOR, ".pct").text  # before -> after temperature

        shot = tmp_path / "serve_page.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        # Nothing outside this server was requested: the page works offline.
        urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(server.url) for u in urls), urls
    assert "Traceback" not in server.stderr


def test_the_page_asks_for_no_more_tokens_than_a_server_started_with_a_small_max_tokens_allows(
        tiny_lm_dir, tmp_path, browser):
    # The page's default is 120 new tokens; a server started with --max-tokens 40 answers any request for more
    # with a 400, so the page must learn the limit (GET /v1/models) and every message must get an answer.
    sft, _ = served_models(tiny_lm_dir, tmp_path)
    with running_server("--model", str(sft), "--max-tokens", "40") as server:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        field = browser.find_element(By.ID, "max-tokens")
        assert (field.get_attribute("value"), field.get_attribute("max")) == ("40", "40")
        field.clear()
        field.send_keys("300")  # typed past the bound: still asks for at most 40
        browser.execute_script("document.getElementById('temperature').value = '0';")
        browser.find_element(By.ID, "message").send_keys("Tell me everything.")
        browser.find_element(By.ID, "send").click()
        meta = lambda d: d.find_element(By.CSS_SELECTOR, ".message.assistant .meta").text  # noqa: E731
        wait.until(lambda d: "tokens in" in meta(d))
        assert not browser.find_elements(By.CSS_SELECTOR, ".message.assistant.error")
        assert int(meta(browser).split(" tokens")[0]) <= 40
    assert "Traceback" not in server.stderr
