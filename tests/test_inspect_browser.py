"""The dashboard in a real headless Chromium: it opens from file://, every unit section is shown,
the firing token is highlighted with the right text, the histograms have bars, JS runs cleanly.

Needs Debian's ``chromium`` and ``chromium-driver`` and ``selenium`` (the dev extra); skipped
without them. A screenshot goes to ``$TMPDIR/mxbench-dashboard.png`` for a human look.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from bench.inspect.dashboard import write_dashboard
from bench.models import load_model
from tests.test_inspect import build_tiny_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
SCREENSHOT = Path(tempfile.gettempdir()) / "mxbench-dashboard.png"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, tiny_model_dir, corpus_file):
    run = build_tiny_run(tmp_path_factory.mktemp("run"), tiny_model_dir, corpus_file, names=("mxd",))
    return write_dashboard(run, "mxd-4", units=[5, 2, 9], n_texts=4, device="cpu")


def test_dashboard_renders_in_headless_chromium(browser, dashboard, tiny_model_dir):
    from selenium.webdriver.common.by import By

    blob = json.loads((dashboard.parent / "units.json").read_text())
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    browser.get(dashboard.resolve().as_uri())
    assert browser.title == "mxd-4: unit dashboard"
    for unit_blob in blob["units"]:
        stats = unit_blob["stats"]
        section = browser.find_element(By.ID, f"unit-{stats['unit']}")
        assert section.is_displayed()
        top = stats["top_contexts"][0]
        fire = section.find_element(By.CSS_SELECTOR, "ol.contexts li:first-child .tok.fire")
        assert fire.is_displayed()
        assert fire.text.strip() == tokenizer.decode([top["token_ids"][top["focus"]]]).strip()
        bars = section.find_elements(By.CSS_SELECTOR, "svg.histogram rect.bar")
        assert len(bars) == 20 and any(float(b.get_attribute("height")) > 0 for b in bars)
        assert sum(int(b.find_element(By.TAG_NAME, "title").get_attribute("textContent").split(": ")[1].split()[0])
                   for b in bars) == stats["n_fired"]
    browser.save_screenshot(str(SCREENSHOT))
    browser.find_element(By.ID, "filter").send_keys("2")  # the page's one script: filter sections by unit
    assert [s.is_displayed() for s in browser.find_elements(By.CSS_SELECTOR, "section.unit")] == [False, True, False]
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
