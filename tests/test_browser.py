"""The playground in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by selenium types a prompt, presses Generate and watches the
completion stream in. A screenshot lands in test-artifacts/ (or $CODELM_TEST_ARTIFACTS).
Skips, saying why, when no Chromium or driver is installed."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from codelm.model import ModelConfig, Transformer
from codelm.serve import BackgroundServer, ServeConfig, create_app
from tests.conftest import TINY_MODEL

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")
ARTIFACTS = Path(
    os.environ.get("CODELM_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")
)


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isfile(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


@pytest.fixture
def browser():
    chromium, driver = _find(BROWSERS), _find(DRIVERS)
    if chromium is None or driver is None:
        missing = "chromium" if chromium is None else "chromedriver"
        pytest.skip(
            f"no {missing} found: install Debian's chromium and chromium-driver to run the browser test"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="codelm-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def playground(tokenizer, monkeypatch):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **{**TINY_MODEL, "block_size": 256}))
    app = create_app(model.eval(), tokenizer, ServeConfig(), name="tiny")
    sched = app.state.service.sched
    step = sched.engine.step

    def slow():  # a visible pace, so the page is seen mid-stream
        time.sleep(0.03)
        return step()

    monkeypatch.setattr(sched.engine, "step", slow)
    monkeypatch.setattr(sched.engine, "special", frozenset())  # no early end-of-text from a random model
    with BackgroundServer(app) as url:
        yield url


def test_the_playground_streams_a_completion(browser, playground):
    browser.get(playground + "/")
    wait = WebDriverWait(browser, 20, poll_frequency=0.02)
    wait.until(lambda d: "tiny" in d.find_element(By.ID, "model").text)
    assert not browser.find_element(By.ID, "instruction").is_displayed()  # only in instruction mode
    assert not browser.find_element(By.ID, "suffix").is_displayed()  # only in fill-in-the-middle
    code = browser.find_element(By.ID, "code")
    code.send_keys("def add(a, b):\n")
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("40")
    browser.find_element(By.ID, "trace").click()
    browser.find_element(By.ID, "generate").click()

    completion = browser.find_element(By.ID, "completion")
    stop_reason = browser.find_element(By.ID, "stop-reason")
    # Mid-stream: some text is there while the stop reason is not yet.
    wait.until(lambda d: completion.text.strip() and stop_reason.text == "…")
    partial = completion.text
    wait.until(lambda d: stop_reason.text not in ("…", "–"))
    assert stop_reason.text.startswith("length") and len(completion.text) > len(partial)
    assert int(completion.get_attribute("data-chunks")) > 5
    assert browser.find_element(By.ID, "before").text.startswith("def add(a, b):")
    rows = browser.find_elements(By.CSS_SELECTOR, "#trace-table tbody tr")
    assert len(rows) == 40 and "%" in rows[0].text
    assert not browser.find_element(By.ID, "error").is_displayed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "playground.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0

    Select(browser.find_element(By.ID, "mode")).select_by_value("fim")
    assert browser.find_element(By.ID, "suffix").is_displayed()
    browser.find_element(By.ID, "suffix").send_keys("    return c\n")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: stop_reason.text not in ("…", "–") and completion.text)
    assert browser.find_element(By.ID, "after").text.strip() == "return c"
    browser.save_screenshot(str(ARTIFACTS / "playground-fim.png"))
