"""The chat page of `gpt2kit serve` driven in headless Chromium (Debian's chromium and chromium-driver, Selenium):
the API key, a reply streaming in, stop, Enter and Shift+Enter, new chat, the completion box of a base model; no
console errors and no request to another host."""

from __future__ import annotations

import json
import shutil
import time

import pytest

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("the browser test needs Chromium and its driver: apt-get install chromium chromium-driver "
                "(.ci/run installs them)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402  (after the skip: selenium may be absent)
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from .conftest import BLOCK_SIZE  # noqa: E402

KEY = "s3cret-key"
WAIT_S = 30


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--no-first-run", "--window-size=1000,800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _wait(driver, cond, what: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: cond(), message=what)


def _text(element) -> str:
    return element.get_attribute("textContent")  # as set, whitespace included (.text is the rendered text)


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_chat_page_streams_stops_and_asks_for_the_key(browser, make_server, checkpoints):
    server = make_server(checkpoints["sft"], "--api-key", KEY)
    d = browser
    d.get(server.base + "/")
    field = d.find_element(By.ID, "key")
    _wait(d, field.is_displayed, "the page to ask for the API key")

    # a wrong key is refused with a clear message; the right one shows the model's name
    field.send_keys("wrong", Keys.ENTER)
    _wait(d, lambda: "refused" in d.find_element(By.ID, "key-message").text, "the 401 message")
    assert "API key" in d.find_element(By.ID, "status").text
    expected_401 = _console_errors(d)  # Chromium reports the refused request itself on the console
    assert expected_401 and all("401" in e for e in expected_401), expected_401
    d.find_element(By.ID, "key").send_keys(KEY, Keys.ENTER)
    _wait(d, lambda: d.find_element(By.ID, "model").text == "sft", "the model name")
    assert not d.find_element(By.ID, "key-form").is_displayed()
    # the default reply length fits the model's context (128 did not fit the 128-token demo model)
    box_max = d.find_element(By.ID, "max-tokens")
    assert int(box_max.get_attribute("max")) == BLOCK_SIZE - 1
    assert int(box_max.get_attribute("value")) <= BLOCK_SIZE // 2

    # Shift+Enter is a new line, Enter sends; a long reply streams in and Stop ends it
    box = d.find_element(By.ID, "input")
    max_tokens = d.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("1000")
    box.send_keys("<b>Hello</b>", Keys.SHIFT, Keys.ENTER, Keys.NULL, "there")
    assert box.get_attribute("value") == "<b>Hello</b>\nthere" and not d.find_elements(By.CSS_SELECTOR, ".msg")
    box.send_keys(Keys.ENTER)
    reply = _wait(d, lambda: d.find_elements(By.CSS_SELECTOR, ".msg.assistant"), "the reply entry")[0]
    stop = d.find_element(By.ID, "stop")
    _wait(d, lambda: _text(reply) and stop.is_enabled(), "text arriving while the reply is generated")
    first = _text(reply)
    _wait(d, lambda: len(_text(reply)) > len(first) and stop.is_enabled(), "more text streaming in")
    stop.click()
    _wait(d, lambda: "stopped" in reply.get_attribute("class"), "the reply marked stopped")
    assert d.find_element(By.ID, "send").is_enabled() and not stop.is_enabled()
    _wait(d, lambda: server.health()["active"] == 0, "the server to stop generating")
    stopped_at = _text(reply)
    time.sleep(0.3)
    assert _text(reply) == stopped_at and len(stopped_at) < 1000 * 20
    user = d.find_element(By.CSS_SELECTOR, ".msg.user")
    assert _text(user) == "<b>Hello</b>\nthere" and not d.find_elements(By.CSS_SELECTOR, "#log b")  # text, not HTML

    # the conversation goes on: a second, short reply finishes by itself; New chat clears it
    max_tokens.clear()
    max_tokens.send_keys("4")
    box.send_keys("And then?", Keys.ENTER)
    _wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2
          and d.find_element(By.ID, "send").is_enabled(), "the second reply to finish")
    second = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[1]
    assert _text(second) and "stopped" not in second.get_attribute("class")
    assert not d.find_element(By.ID, "status").is_displayed()
    d.find_element(By.ID, "new").click()
    assert not d.find_elements(By.CSS_SELECTOR, ".msg")

    assert _console_errors(d) == []
    urls = _requested_urls(d)
    assert server.base + "/v1/chat/completions" in urls  # the log saw the page's requests
    foreign = [u for u in urls if not u.startswith(server.base + "/")]
    assert foreign == [], foreign


def test_base_model_gets_a_completion_box(browser, make_server, checkpoints):
    server = make_server(checkpoints["base"])
    d = browser
    d.get(server.base + "/")
    _wait(d, lambda: "base model" in d.find_element(By.ID, "model").text, "the model name")
    assert not d.find_element(By.ID, "key-form").is_displayed() and d.find_element(By.ID, "new").text == "Clear"
    max_tokens = d.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("6")
    temperature = d.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    d.find_element(By.ID, "input").send_keys("Once upon a time", Keys.ENTER)
    entry = _wait(d, lambda: d.find_elements(By.CSS_SELECTOR, ".msg.completion"), "the completion entry")[0]
    generated = entry.find_element(By.CSS_SELECTOR, ".generated")
    _wait(d, lambda: _text(generated) and d.find_element(By.ID, "send").is_enabled(), "the completion to finish")
    assert _text(entry) == "Once upon a time" + _text(generated)
    assert not d.find_element(By.ID, "status").is_displayed()
    assert _console_errors(d) == []
    urls = _requested_urls(d)
    assert server.base + "/static/favicon.svg" in urls and server.base + "/v1/completions" in urls
    foreign = [u for u in urls if not u.startswith(server.base + "/")]
    assert foreign == [], foreign
