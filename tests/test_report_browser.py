"""report.html of a small run, opened in a real headless Chromium: no console errors, the verdict,
every arm and every plot shown, the examples filter counting the same rows as the run's records,
and the page usable with scripts off and in print. A screenshot is left in the run directory
(report.png) for a person to look at.

Chromium is the Debian package (`apt-get install chromium`; .ci/run installs it), driven by
Playwright's Python client; Playwright's own browser download is not used. Set TUNEORPROMPT_CHROMIUM
to use another binary. Without any binary the test skips, saying so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.fakes import ScriptedBackend
from tests.test_experiment import write_task
from tuneorprompt.experiment import run_experiment


def chromium_binary() -> str | None:
    given = os.environ.get("TUNEORPROMPT_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


# Flags for a quiet, offline, disposable browser: as root in a container it needs --no-sandbox, and
# nothing should phone home (the page itself has no external resources).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def answer(prompt: str) -> str:
    """With demonstrations in the prompt, right on even items; without, right on every third: the
    two arms disagree on some items and agree on others."""
    question = prompt.rsplit("Question: ", 1)[-1]
    item = question.split("item ", 1)[1].split("?")[0]
    number = int(item[2:])
    few_shot = prompt.count("Question: ") > 1
    return f" Place {item}\n" if (number % 2 == 0 if few_shot else number % 3 == 0) else " no idea\n"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    config = {
        "name": "browser-check",
        "model": {"path": "unused-with-an-injected-backend"},
        "data": write_task(tmp / "data", n=12),
        "arms": ["baseline", {"kind": "few_shot", "k": [2]}],
        "target": {"accuracy": 0.4},
    }
    return run_experiment(config, tmp / "run", backend=ScriptedBackend(answer))


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set TUNEORPROMPT_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # `launch` gives the browser a fresh temporary profile (--user-data-dir), removed on close:
        # no cached page, extension or setting from an earlier run.
        browser = playwright.chromium.launch(executable_path=binary, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_report(context, run_dir: Path, errors: list[str]):
    page = context.new_page()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((run_dir / "report.html").resolve().as_uri())
    page.wait_for_load_state("load")
    return page


def visible_rows(page) -> int:
    return page.locator("#examples tbody tr:visible").count()


def test_the_report_renders_and_its_filter_counts_the_records(small_run, browser):
    report, records, run_dir = small_run.report, small_run.records, small_run.run_dir
    errors: list[str] = []
    page = open_report(browser.new_context(viewport={"width": 1200, "height": 900}), run_dir, errors)

    assert page.locator("#headline").inner_text().strip() == report.recommendation.headline
    assert page.locator("#details").inner_text().strip() == report.recommendation.details
    arm_names = [a.name for a in report.arms]
    assert page.locator("#arms tbody th[scope=row]").all_inner_texts() == arm_names

    plots = page.locator("img.plot")
    assert plots.count() == 3  # accuracy, relevance, accuracy against cost (no learning curve here)
    for index in range(plots.count()):
        image = plots.nth(index)
        assert image.evaluate("img => img.complete && img.naturalWidth > 0"), f"plot {index} did not load"
        assert len(image.get_attribute("alt")) > 40  # described in words, not only titled

    n_test = report.data.n_test
    assert visible_rows(page) == n_test
    assert page.locator("#filter-count").inner_text() == f"{n_test} of {n_test} items shown"
    for arm in arm_names:
        first_seed = records[arm][0]
        page.select_option("#filter-arm", arm)
        page.select_option("#filter-outcome", "wrong")
        assert visible_rows(page) == sum(r.correct < 0.5 for r in first_seed), arm
        page.select_option("#filter-outcome", "right")
        assert visible_rows(page) == sum(r.correct >= 0.5 for r in first_seed), arm
    page.select_option("#filter-arm", "")
    page.select_option("#filter-outcome", "")
    page.check("#filter-disagree")
    by_arm = [{r.example_id: r.correct >= 0.5 for r in records[arm][0]} for arm in arm_names]
    disagree = sum(len({outcomes[i] for outcomes in by_arm}) > 1 for i in by_arm[0])
    assert 0 < disagree < n_test and visible_rows(page) == disagree
    page.uncheck("#filter-disagree")
    assert visible_rows(page) == n_test

    # Printed, the controls are gone and a filtered view still shows every row.
    page.select_option("#filter-outcome", "wrong")
    page.emulate_media(media="print")
    assert not page.locator("#example-filters").is_visible()
    assert visible_rows(page) == n_test
    page.emulate_media(media="screen")
    page.select_option("#filter-outcome", "")

    page.screenshot(path=str(run_dir / "report.png"), full_page=True)
    assert (run_dir / "report.png").stat().st_size > 10_000
    assert errors == []


def test_with_scripts_off_every_row_shows_and_no_control_is_offered(small_run, browser):
    # The reader without scripts: a mail client's preview, a locked-down browser.
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto((small_run.run_dir / "report.html").resolve().as_uri())
        assert visible_rows(page) == small_run.report.data.n_test
        assert not page.locator("#example-filters").is_visible()  # controls that could not work stay hidden
        assert page.locator("#verdict").is_visible()
    finally:
        context.close()
