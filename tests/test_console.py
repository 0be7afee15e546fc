"""The web console in a real headless Chromium (Selenium, Debian's chromium and chromedriver) against a
real server: token, query count, plan, breakdown chart (by value, and numeric in bins chosen from the
values' range or typed), an error at its column, saved segments with size-history sparklines and
their overlap heat map, a profile lookup and a why tree. Screenshots are kept in
$SEGENGINE_SCREENSHOTS (default: the test's tmp dir)."""
from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from engine import Engine, Schema
from loaders.generator import generate
from server.app import SegengineServer, ServerConfig

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "console-token"
NOW = 1_800_000_000_000
SEGMENTS = {"french": "country = 'FR'", "french_vips": "SEGMENT('french') AND vip = TRUE", "vips": "vip = TRUE"}
HOUR = 3_600_000
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
    ids = list(ds.profiles.ids)
    start = time.time_ns() // 1_000_000 - 8 * HOUR
    engine.clock = lambda: start  # segment sizes change over the last hours: history to draw
    for name, query in SEGMENTS.items():
        engine.create_segment(name, query)
    for step in range(1, 7):
        start += HOUR
        engine.upsert_profiles([{"id": ids[k], "country": "FR", "vip": step % 2 == 0}
                                for k in range(step * 40, step * 40 + 10 * step)])
    engine.clock = lambda: time.time_ns() // 1_000_000
    server = SegengineServer(engine, ServerConfig(port=0, http_port=0, refresh_ms=0, token=TOKEN),
                             owns_engine=True).start()
    yield server, engine, ids
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
    return WebDriverWait(driver, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)) \
        .until(lambda d: condition(d))


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
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.segment-row")) == 3)
    rows = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in driver.find_elements(By.CSS_SELECTOR, "tr.segment-row")]
    assert [[r[0], r[1], r[3]] for r in rows] == \
        [[name, f"{engine.get_segment(name)['count']:,}", query] for name, query in SEGMENTS.items()]
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
    assert text(driver, "#profile-segments") == "french, french_vips, vips"

    # clicking a saved segment queries it
    driver.find_element(By.CSS_SELECTOR, "a[data-segment='french']").click()
    wait_for(driver, lambda d: text(d, "#count") == f"{engine.get_segment('french')['count']:,}")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#breakdown-svg rect.bar"))
    driver.save_screenshot(str(shots / "console-segment-profile.png"))
    assert {path.name for path in shots.iterdir()} >= {"console-query.png", "console-error.png",
                                                       "console-segment-profile.png"}


def login(driver, server) -> None:
    driver.get(f"http://127.0.0.1:{server.http_port}/")
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.segment-row")) == 3)


def shown_bins(bins: list, counts: dict, edge_format) -> dict[str, int]:
    """The bars a binned breakdown should show: every bin in edge order (0 if the engine left it out), then null."""
    bars = {f"[{edge_format(lo)}, {edge_format(hi)})": counts.get((lo, hi), 0) for lo, hi in zip(bins, bins[1:])}
    if None in counts:
        bars["(null)"] = counts[None]
    return bars


def chart_bars(driver) -> dict[str, int]:
    return {bar.get_attribute("data-key"): int(bar.get_attribute("data-count"))
            for bar in driver.find_elements(By.CSS_SELECTOR, "#breakdown-svg rect.bar")}


def test_console_numeric_breakdown_in_bins(console, browser, shots):
    server, engine, ids = console
    driver = browser
    login(driver, server)
    Select(driver.find_element(By.ID, "by")).select_by_value("age")
    assert driver.find_element(By.ID, "bins").is_displayed()
    run_query(driver, QUERY)
    wait_for(driver, lambda d: text(d, "#chart-by").startswith("by age ("))
    bins = json.loads(driver.find_element(By.ID, "chart").get_attribute("data-bins"))
    ages = engine.breakdown(QUERY, "age", bins=[-2**62, 2**62])  # every non-null age in one bin
    counts = engine.breakdown(QUERY, "age", bins=bins)
    steps = {b - a for a, b in zip(bins, bins[1:])}
    assert len(steps) == 1 and 5 <= len(bins) - 1 <= 12  # round bins, as many as the range needs
    assert sum(n for key, n in counts.items() if key is not None) == ages[(-2**62, 2**62)]  # they cover every age
    assert chart_bars(driver) == shown_bins(bins, counts, "{:,}".format)
    driver.save_screenshot(str(shots / "console-breakdown-bins.png"))

    bins_box = driver.find_element(By.ID, "bins")
    bins_box.send_keys("0, 40, 60, 200")
    driver.find_element(By.ID, "run").click()
    wait_for(driver, lambda d: text(d, "#chart-by") == "by age (3 bins)")
    counts = engine.breakdown(QUERY, "age", bins=[0, 40, 60, 200])
    wait_for(driver, lambda d: chart_bars(d) == shown_bins([0, 40, 60, 200], counts, str))

    Select(driver.find_element(By.ID, "by")).select_by_value("signup_at")
    driver.find_element(By.ID, "run").click()
    wait_for(driver, lambda d: text(d, "#chart-by").startswith("by signup_at ("))
    bins = json.loads(driver.find_element(By.ID, "chart").get_attribute("data-bins"))
    counts = engine.breakdown(QUERY, "signup_at", bins=bins)
    assert all(datetime.fromtimestamp(edge / 1000, timezone.utc).strftime("%d %H:%M:%S") == "01 00:00:00"
               for edge in bins)  # whole months
    day = "{}".format
    assert list(chart_bars(driver).values()) == list(shown_bins(bins, counts, day).values())
    assert sum(chart_bars(driver).values()) == sum(counts.values()) == engine.count(QUERY)
    driver.save_screenshot(str(shots / "console-breakdown-timestamps.png"))


def test_console_segment_history_and_overlap(console, browser, shots):
    server, engine, ids = console
    driver = browser
    login(driver, server)
    names = list(SEGMENTS)
    for name in names:
        points = engine.segment_history(name)
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"svg.spark[data-segment='{name}']"))
        spark = driver.find_element(By.CSS_SELECTOR, f"svg.spark[data-segment='{name}']")
        assert int(spark.get_attribute("data-points")) == len(points) >= 3
        assert spark.find_elements(By.CSS_SELECTOR, "path.spark-line")
    matrix = engine.overlap([f"SEGMENT('{name}')" for name in names])
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overlap-table td.heat")) == 9)
    cells = {(cell.get_attribute("data-row"), cell.get_attribute("data-col")): int(cell.get_attribute("data-count"))
             for cell in driver.find_elements(By.CSS_SELECTOR, "#overlap-table td.heat")}
    assert cells == {(a, b): matrix[i][j] for i, a in enumerate(names) for j, b in enumerate(names)}
    assert cells[("french_vips", "french")] == cells[("french_vips", "french_vips")] > 0
    driver.save_screenshot(str(shots / "console-segments.png"))


def test_console_why_tree(console, browser, shots):
    server, engine, ids = console
    driver = browser
    login(driver, server)
    query = "country = 'FR' AND (vip = TRUE OR DID(purchase, WITHIN 30d)) AND CONSENTED(email)"
    run_query(driver, query)
    wait_for(driver, lambda d: text(d, "#count") == f"{engine.count(query):,}")
    inside, outside = engine.ids(query)[0], engine.ids(f"SEGMENT('french') AND NOT ({query})")[0]
    for profile_id, verdict in ((inside, "is in"), (outside, "is not in")):
        box = driver.find_element(By.ID, "why-id")
        box.clear()
        box.send_keys(profile_id)
        driver.find_element(By.CSS_SELECTOR, "#why-form button").click()
        wait_for(driver, lambda d: text(d, "#why-verdict").startswith(f"{profile_id} {verdict} the segment"))
        expected = engine.why(profile_id, query)["tree"]

        def flat(node, out):
            out.append(("✓" if node["value"] else "✗", node["text"]))
            for child in node["children"]:
                flat(child, out)
            return out

        shown = [(item.find_element(By.CSS_SELECTOR, ":scope > .mark").text,
                  item.find_element(By.CSS_SELECTOR, ":scope > code").text)
                 for item in driver.find_elements(By.CSS_SELECTOR, "ul.why-tree li")]
        assert shown == flat(expected, [])
        country = driver.find_element(By.XPATH, "//ul[@class='why-tree']//li[code=\"country = 'FR'\"]/span[@class='facts']")
        assert country.text == 'country = "FR"'
        driver.execute_script("document.getElementById('why-panel').scrollIntoView()")
        driver.save_screenshot(str(shots / f"console-why-{'in' if verdict == 'is in' else 'out'}.png"))
    box = driver.find_element(By.ID, "why-id")
    box.clear()
    box.send_keys("nobody")
    driver.find_element(By.CSS_SELECTOR, "#why-form button").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "why-error"))
    assert text(driver, "#why-error") == "unknown profile 'nobody'"
