"""The simulation report as its reader sees it: `voice-worker simulate --report` output opened in the browser tests'
Chromium, checked for what it must show and photographed (the screenshot is the test's artifact).

The results are real text-mode runs of two shipped scenarios (tests/test_simulations.py's scripted model): one that
passes and one on a broken revision that fails, so the page shows both kinds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contract.settings import EXAMPLE_CATALOG
from simulations.report import html_report
from simulations.results import ScenarioResult
from tests.e2e import browser
from tests.e2e.conftest import unavailable
from tests.test_simulations import SCENARIOS, _broken_catalog, load, runner
from worker.settings import Settings


@pytest.fixture(scope="module")
def chromium_ready() -> None:
    reason = browser.problem()
    if reason is not None:
        unavailable(reason)


def _results(tmp_path: Path) -> list[ScenarioResult]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only option
        VOICE_WORKER_MODE="dev",
        OPENAI_API_KEY="sk-test-not-real",
        DEEPGRAM_API_KEY="dg-test-not-real",
    )

    async def run() -> list[ScenarioResult]:
        good = await runner(settings, EXAMPLE_CATALOG).run(load(SCENARIOS / "support-refund-request.yaml"))
        bad = await runner(settings, _broken_catalog(tmp_path)).run(load(SCENARIOS / "support-order-status.yaml"))
        return [good, bad]

    return asyncio.run(run())


def test_the_html_report_opens_in_chromium_and_shows_each_scenario(chromium_ready: None, tmp_path: Path) -> None:
    results = _results(tmp_path)
    assert [r.passed for r in results] == [True, False]
    report = tmp_path / "report.html"
    report.write_text(html_report(results), encoding="utf-8")

    with browser.chromium_page(tmp_path, None) as page:
        page.goto(report.as_uri())  # type: ignore[attr-defined]  # a playwright Page
        body = page.inner_text("body")  # type: ignore[attr-defined]
        assert "1 of 2 scenarios passed" in body
        assert "support-refund-request" in body and "support-order-status" in body
        # the failing expectation with its reason, the transcript and the latency chart are on the page
        assert "order_lookup" in body
        assert "Hi Dana, thanks for calling Acme support." in body
        charts = page.locator("svg")  # type: ignore[attr-defined]
        assert charts.count() >= 1 and charts.first.is_visible()
        errors = [line for line in page.vw_console if line.startswith(("error", "pageerror"))]  # type: ignore[attr-defined]
        assert errors == [], errors
        shot = tmp_path / "simulation-report.png"
        page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
