"""The web console in a real headless Chromium (Selenium, Debian's chromium and chromedriver) against a
real server: token, query count, plan, breakdown chart, an error at its column, saved segments and a
profile lookup. Screenshots are kept in $SEGENGINE_SCREENSHOTS (default: the test's tmp dir)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engine import Engine, Schema
from loaders.generator import generate
from server.app import SegengineServer, ServerConfig

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "console-token"
NOW = 1_800_000_000_000
SEGMENTS = {"french": "country = 'FR'", "french_vips": "SEGMENT('french') AND vip = TRUE"}
QUERY = "age > 30 AND CONSENTED(email)"

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


@pytest.fixture(scope="module")
def console():
    ds = generate(profiles=2000, events=10_000, seed=3, now_ms=NOW)
    engine = Engine(Schema.from_dict(ds.schema), shards=1)
    engine.load_profiles(ds.profiles)
    for batch in ds.events:
        engine.load_events(batch)
    for name, query in SEGMENTS.items():
        engine.create_segment(name, query)
    server = SegengineServer(engine, ServerConfig(port=0, http_port=0, refresh_ms=0, token=TOKEN),
                             owns_engine=True).start()
    yield server, engine, list(ds.profiles.ids)
    server.stop(grace_s=1)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1100", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("SEGENGINE_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def wait_for(driver, condition, timeout: float = 20):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def run_query(driver, query: str) -> None:
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    driver.find_element(By.ID, "run").click()


def test_console_query_plan_chart_error_segments_profile(console, browser, shots):
    server, engine, ids = console
    driver = browser
    driver.get(f"http://127.0.0.1:{server.http_port}/")
    wait_for(driver, lambda d: "missing or invalid bearer token" in text(d, "#segments tbody"))
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()

    # saved segments with their sizes
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.segment-row")) == 2)
    rows = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in driver.find_elements(By.CSS_SELECTOR, "tr.segment-row")]
    assert rows == [[name, f"{engine.get_segment(name)['count']:,}", query] for name, query in SEGMENTS.items()]
    assert text(driver, "#stats").startswith("2,000 profiles · 10,000 events · 1 shard(s)")

    # a query: its count, its plan, its breakdown by country
    run_query(driver, QUERY)
    expected = engine.count(QUERY)
    wait_for(driver, lambda d: text(d, "#count") == f"{expected:,}")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#breakdown-svg rect.bar"))
    steps = [row.find_element(By.CSS_SELECTOR, "td.step").text for row in driver.find_elements(By.CSS_SELECTOR, "#plan tr.step-row")]
    assert steps[0] == "AND" and sorted(steps[1:]) == ["PRED CONSENTED(email)", "PRED age > 30"]
    bars = {bar.get_attribute("data-key"): int(bar.get_attribute("data-count"))
            for bar in driver.find_elements(By.CSS_SELECTOR, "#breakdown-svg rect.bar")}
    countries = {k: v for k, v in bars.items() if k not in ("(null)", "(other)")}
    assert countries == {c: engine.count(f"({QUERY}) AND country = '{c}'") for c in countries}
    assert sum(bars.values()) == expected and len(countries) == 12  # the 12 largest, the rest as "(other)"
    assert text(driver, "#chart-by") == "by country"
    driver.save_screenshot(str(shots / "console-query.png"))

    # an error shown at its column
    bad = "age > 30 AND countri = 'FR'"
    run_query(driver, bad)
    wait_for(driver, lambda d: d.find_element(By.ID, "error").is_displayed())
    assert text(driver, "#error-message") == \
        "INVALID_ARGUMENT: unknown attribute 'countri' at column 14 near 'countri'"
    caret = driver.execute_script("return document.getElementById('error-caret').textContent")
    assert caret == " " * 13 + "^"
    assert text(driver, "#count") == "" and not driver.find_elements(By.CSS_SELECTOR, "#plan tr.step-row")
    driver.save_screenshot(str(shots / "console-error.png"))

    # a profile lookup: its record and saved segments
    french_vip = engine.ids("SEGMENT('french_vips')")[0]
    field = driver.find_element(By.ID, "profile-id")
    field.send_keys(french_vip)
    driver.find_element(By.CSS_SELECTOR, "#profile-form button").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "profile-segments"))
    assert text(driver, "#profile dd[data-field='id']") == french_vip
    assert text(driver, "#profile dd[data-field='country']") == "FR"
    assert text(driver, "#profile-segments") == "french, french_vips"

    # clicking a saved segment queries it
    driver.find_element(By.CSS_SELECTOR, "a[data-segment='french']").click()
    wait_for(driver, lambda d: text(d, "#count") == f"{engine.get_segment('french')['count']:,}")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#breakdown-svg rect.bar"))
    driver.save_screenshot(str(shots / "console-segment-profile.png"))
    assert {path.name for path in shots.iterdir()} >= {"console-query.png", "console-error.png",
                                                       "console-segment-profile.png"}
