"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium.

The browser and its driver are the system packages (``apt-get install chromium
chromium-driver``); nothing is downloaded. Without them these tests fail: a dashboard that was
never rendered is not a dashboard that works.

Every wait is an explicit WebDriver wait on something the page shows. With
``MPPOOL_SCREENSHOT=1`` the first test also runs a longer, mixed workload and saves the
picture to ``docs/dashboard.png``; otherwise the screenshot goes to the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

import mppool
from mppool._web._registry import fib, primes, sha256
from mppool._web._server import serve

from . import tasks
from .conftest import PoolTracker

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0  # seconds for any one thing to appear on the page
TASK_TIMEOUT = 60.0
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


@pytest.fixture
def browser(leak_check: None, tmp_path: Path) -> Iterator[WebDriver]:
    """A headless chromium, quit before the leak check runs."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(
            f"the browser test needs {', '.join(missing)}: "
            "apt-get install -y chromium chromium-driver"
        )
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1440,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition: Any, message: str) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition, message)


def number(driver: WebDriver, element_id: str) -> int | None:
    text = texts(driver, f"#{element_id}")[0].replace(",", "")
    return int(text) if text.isdigit() else None


def polls(driver: WebDriver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-polls") or 0)


def texts(driver: WebDriver, css: str) -> list[str]:
    """Texts of the elements matching ``css``, read in one script run.

    The page rebuilds its tables on every poll, so element handles go stale between calls;
    reading inside the page is atomic with respect to its updates.
    """
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
    return list(driver.execute_script(script, css))


def worker_cells(driver: WebDriver, css: str) -> list[str]:
    return texts(driver, f"#workers tr[data-worker] {css}")


def no_console_errors(driver: WebDriver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_dashboard_updates_live(
    make_pool: PoolTracker, browser: WebDriver, fifos: Any, tmp_path: Path
) -> None:
    pool = make_pool(2)
    with serve(pool) as server:
        browser.get(server.url)
        assert browser.title == "mppool dashboard"
        wait(browser, lambda d: number(d, "stat-completed") == 0, "no stats on the page")
        wait(browser, lambda d: len(worker_cells(d, ".pid")) == 2, "no worker rows")

        # A task held at a gate shows up as a busy worker running that task.
        started, gate = fifos("started"), fifos("gate")
        held = pool.submit(tasks.gated, started.path, gate.path, "held")
        started.take()
        task_id = str(held.task_id)  # type: ignore[attr-defined]
        wait(browser, lambda d: task_id in worker_cells(d, ".current-task"), "held task not shown")
        assert "busy" in worker_cells(browser, ".pill")
        gate.post()
        assert held.result(TASK_TIMEOUT) == "held"

        # Counters and per-worker cells move as more work completes.
        for fut in [pool.submit(primes, 20_000) for _ in range(10)]:
            assert fut.result(TASK_TIMEOUT) == 2262
        wait(browser, lambda d: number(d, "stat-completed") == 11, "completed did not reach 11")
        done = sum(int(c) for c in worker_cells(browser, ".tasks-done"))
        assert done == 11

        batch = [pool.submit(primes, 20_000) for _ in range(10)]
        wait(browser, lambda d: (number(d, "stat-completed") or 0) > 11, "no update seen")
        for fut in batch:
            fut.result(TASK_TIMEOUT)
        wait(browser, lambda d: number(d, "stat-completed") == 21, "completed did not reach 21")
        wait(
            browser,
            lambda d: sum(int(c) for c in worker_cells(d, ".tasks-done")) == 21,
            "tasks-done cells did not reach 21",
        )
        assert texts(browser, "#latency tbody td:first-child") == [
            "queue wait",
            "run time",
            "end to end",
        ]

        # A failure appears in the failures table.
        failing = pool.submit(fib, -1)
        assert isinstance(failing.exception(TASK_TIMEOUT), ValueError)
        wait(browser, lambda d: number(d, "stat-failed") == 1, "failed counter not updated")
        failure_id = str(failing.task_id)  # type: ignore[attr-defined]
        wait(
            browser,
            lambda d: failure_id in texts(d, "#failures td:first-child"),
            "failure not listed",
        )

        load: list[Any] = []
        if os.environ.get("MPPOOL_SCREENSHOT") == "1":
            load = show_real_load(pool, browser, server.url)
            target = SCREENSHOT
        else:
            target = tmp_path / "dashboard.png"
        fit_page(browser)
        assert browser.save_screenshot(str(target))
        assert target.stat().st_size > 10_000
        for fut in load:
            fut.cancel()
        no_console_errors(browser)


def test_dashboard_shows_resizes(make_pool: PoolTracker, browser: WebDriver) -> None:
    pool = make_pool(1)
    with serve(pool) as server:
        browser.get(server.url)
        wait(browser, lambda d: len(worker_cells(d, ".pid")) == 1, "no worker row")
        assert texts(browser, "#scaling td") == ["no resize yet"]
        pool.resize(3)
        wait(browser, lambda d: len(worker_cells(d, ".pid")) == 3, "grown workers not shown")
        wait(browser, lambda d: texts(d, "#meta")[0].startswith("3 workers"), "no new size")
        assert texts(browser, "#scaling .scaling-change") == ["1 → 3"]
        pool.resize(2)
        wait(
            browser,
            lambda d: texts(d, "#scaling .scaling-change") == ["3 → 2", "1 → 3"],
            "shrink not listed",
        )
        assert texts(browser, "#scaling .scaling-reason") == ["resize", "resize"]
        assert pool.submit(tasks.square, 3).result(TASK_TIMEOUT) == 9
        no_console_errors(browser)


def test_a_page_opened_late_shows_the_past(
    make_pool: PoolTracker, browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mppool._web import _history

    monkeypatch.setattr(_history, "SAMPLE_SECONDS", 0.05)
    pool = make_pool(2)
    with serve(pool) as server:
        for fut in [pool.submit(primes, 20_000) for _ in range(6)]:
            assert fut.result(TASK_TIMEOUT) == 2262
        url = server.url + "api/history"

        def history() -> list[Any]:
            with urllib.request.urlopen(url, timeout=WAIT) as response:
                return list(json.load(response)["samples"])

        deadline_samples = 20
        WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
            lambda _: len(history()) >= deadline_samples, "the server keeps no history"
        )
        browser.get(server.url)
        loaded = wait(
            browser,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-history"),
            "the page did not load the history",
        )
        assert int(loaded) >= deadline_samples
        # Drawn at once: the queue chart has the past's samples before a second poll.
        drawn = browser.execute_script(
            "const c = document.getElementById('chart-queue');"
            "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let ink = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) ink++; return ink;"
        )
        assert drawn > 0
        no_console_errors(browser)


def fit_page(browser: WebDriver) -> None:
    """Size the window to the whole page, and let the page redraw at that size."""
    for _ in range(3):  # tables may grow on the next poll; re-measure until it is stable
        height = int(browser.execute_script("return document.documentElement.scrollHeight"))
        browser.set_window_size(1440, height)
        inner = int(browser.execute_script("return window.innerHeight"))
        if inner < height:  # window decorations: grow by the difference
            browser.set_window_size(1440, 2 * height - inner)
        seen = polls(browser)
        wait(browser, lambda d, seen=seen: polls(d) >= seen + 2, "no poll after resize")
        if int(browser.execute_script("return document.documentElement.scrollHeight")) == height:
            return


def show_real_load(pool: mppool.Pool, browser: WebDriver, server_url: str) -> list[Any]:
    """Run a mixed workload long enough for the charts to show it (screenshot mode only)."""
    # About 20 s of primes, then (10 polls in) about 10 s of urgent hashing that overtakes
    # them, plus a few failures; the picture is taken while both still have work queued.
    steady = pool.options(kind="primes")
    wave = [steady.submit(primes, 10_000 + (i * 7_919) % 90_000) for i in range(1400)]
    seen = polls(browser)
    wait(browser, lambda d: polls(d) >= seen + 10, "first wave not sampled")
    urgent = pool.options(priority=5, kind="hash")
    wave += [urgent.submit(sha256, 30_000, f"seed-{i}") for i in range(600)]
    for i in range(1, 4):  # a few failures for the table, over HTTP so they carry their error
        body = json.dumps({"name": "fib", "args": [-i], "priority": 5}).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(server_url + "api/tasks", body, headers)
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            assert response.status == 202
    WebDriverWait(browser, 90, poll_frequency=0.2).until(
        lambda d: polls(d) >= seen + 24, "second wave not sampled"
    )
    pool_stats = pool.stats()
    assert pool_stats.queued > 0, "the load ended before the screenshot; make the waves longer"
    return wave


def test_dashboard_takes_a_token_from_the_address(
    make_pool: PoolTracker, browser: WebDriver
) -> None:
    pool = make_pool(1)
    with serve(pool, token="t0ken") as server:
        browser.get(server.url)  # without the token: the page asks for it
        wait(browser, lambda d: d.find_element(By.ID, "auth").is_displayed(), "no token prompt")

        browser.get(server.url + "?token=t0ken")
        wait(browser, lambda d: number(d, "stat-completed") == 0, "no stats with the token")
        assert "token" not in browser.current_url  # removed from the address bar
        assert not browser.find_element(By.ID, "auth").is_displayed()
        pool.submit(tasks.square, 3).result(TASK_TIMEOUT)
        wait(browser, lambda d: number(d, "stat-completed") == 1, "no update with the token")


def test_dashboard_shows_batches_circuits_and_shares(
    make_pool: PoolTracker, browser: WebDriver
) -> None:
    breaker = mppool.CircuitBreaker(failures=1, within=30, reset_after=300)
    pool = make_pool(2, shares={"etl": 3}, circuit_breakers={"io": breaker})
    with serve(pool) as server:
        browser.get(server.url)
        wait(browser, lambda d: polls(d) >= 1, "the page did not poll")
        assert texts(browser, "#batches td") == ["no batch yet"]
        with pool.batch("nightly") as b:
            for x in range(4):
                b.submit(tasks.square, x)
        failed = pool.options(kind="io").submit(tasks.raise_value_error, "down")
        assert isinstance(failed.exception(TASK_TIMEOUT), ValueError)
        pool.options(kind="etl").submit(tasks.spin, 0.01).result(TASK_TIMEOUT)
        wait(
            browser,
            lambda d: texts(d, "#batches tr[data-batch] td")[:1] == ["nightly"],
            "the batch is not listed",
        )
        cells = texts(browser, "#batches tr[data-batch='nightly'] td")
        assert cells[2:6] == ["4", "0", "0", "4"]
        wait(
            browser,
            lambda d: texts(d, "#circuits tr[data-kind='io'] .pill") == ["open"],
            "the open circuit is not shown",
        )
        wait(browser, lambda d: "etl" in texts(d, "#shares td"), "the shares are not shown")
        no_console_errors(browser)
