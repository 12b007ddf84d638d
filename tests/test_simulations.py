"""`voice-worker simulate` in text mode: the example catalog's scenarios through the real call bootstrap with a
deterministic agent LLM (tests/doubles/scenario_brain.py); a broken revision failing the matching expectations
with a reason; JUnit and HTML; the judges' k-run threshold; the command's exit codes."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from calls.call import CallServices
from catalog.loader import CatalogStore, load_catalog
from catalog.pipeline_config import ModelChainEntry
from contract.settings import EXAMPLE_CATALOG
from simulations.judge import judge_item
from simulations.report import html_report, junit_xml
from simulations.results import Line, ScenarioResult
from simulations.scenario import RubricItem, Scenario, ScenarioFile, load_scenario
from simulations.suite import load_scenarios, run_all
from simulations.text_mode import TextRunner
from tests.doubles.fake_llm import FakeLLM
from tests.doubles.scenario_brain import agent_brain, persona_lines, scripted, verdicts
from worker.settings import Settings

SCENARIOS = EXAMPLE_CATALOG / "scenarios"
SHIPPED = sorted(SCENARIOS.glob("*.yaml"))


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None, VOICE_WORKER_MODE="dev", OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY="dg-test-not-real"
    )


class Models:
    """The persona caller and the judge as doubles: a persona that plays a short refund call, a judge that
    passes; `created` keeps what was asked for, to show which model entry each role got."""

    def __init__(self, judge: list[tuple[str, str]] | None = None) -> None:
        self.created: list[ModelChainEntry] = []
        self._judge = judge or [("pass", "the agent did it")]

    def __call__(self, entry: ModelChainEntry) -> FakeLLM:
        self.created.append(entry)
        return FakeLLM(_RoleScript(self._judge))


class _RoleScript:
    """One double for both roles: a request offering hang_up is the persona's, one offering submit_verdict the
    judge's."""

    def __init__(self, judge: list[tuple[str, str]]) -> None:
        self._persona = persona_lines(
            "My kettle broke after two days and I want a refund.", "The order number is 2077."
        )
        self._judge = verdicts(*judge)

    def __call__(self, chat_ctx: Any, tools: list[Any]) -> Any:
        names = [getattr(t, "id", "") for t in tools]
        return next(self._persona if "hang_up" in names else self._judge)


def runner(settings: Settings, catalog: Path = EXAMPLE_CATALOG, models: Models | None = None) -> TextRunner:
    services = CallServices(
        settings=settings, catalog=CatalogStore(catalog), session_kwargs=lambda _: {"llm": FakeLLM(agent_brain)}
    )
    return TextRunner(services=services, models=models or Models())


def load(path: Path) -> ScenarioFile:
    scenario, problems = load_scenario(path)
    assert scenario is not None, problems
    return ScenarioFile(path, scenario)


def test_every_shipped_scenario_is_valid_against_the_example_catalog() -> None:
    files, problems = load_scenarios([SCENARIOS], load_catalog(EXAMPLE_CATALOG))
    assert problems == []
    assert {f.scenario.name for f in files} >= {
        "support-refund-request",
        "support-order-status",
        "support-callback",
        "sales-demo-booking",
        "front-desk-handoff",
        "support-persona-refund",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
async def test_shipped_scenario_passes_in_text_mode(settings: Settings, path: Path) -> None:
    result = await runner(settings).run(load(path))
    assert result.passed, result.failures
    assert result.mode == "text" and result.observed.transcript and result.checks
    # every caller turn was answered and measured
    assert len(result.observed.latencies) == result.observed.caller_turns
    assert all(t.latency_ms is not None for t in result.observed.latencies)


async def test_refund_scenario_shows_what_the_call_did(settings: Settings) -> None:
    result = await runner(settings).run(load(SCENARIOS / "support-refund-request.yaml"))
    observed = result.observed
    assert observed.procedure == "refund_request" and observed.procedure_reason == "router"
    assert observed.end_reason == "participant_left"
    assert observed.transcript[0].text == "Hi Dana, thanks for calling Acme support. How can I help?"
    assert observed.variables["tier"] == "gold"
    [judged] = result.judges
    assert judged.passes == 3 and judged.required == 2 and judged.spread == "3 pass of 3 (needs 2)"


async def test_persona_caller_and_judges_use_the_pipelines_primary_model_by_default(settings: Settings) -> None:
    models = Models()
    result = await runner(settings, models=models).run(load(SCENARIOS / "support-persona-refund.yaml"))
    assert result.passed, result.failures
    assert [line.text for line in result.observed.transcript if line.role == "user"] == [
        "My kettle broke after two days and I want a refund.",
        "The order number is 2077.",
    ]
    assert result.observed.caller_turns == 2  # then the persona hung up
    assert {e.model for e in models.created} == {"gpt-4.1-mini"}  # support's model chain, primary first
    assert [j.item for j in result.judges] == [
        "The agent tells the caller when the refund will arrive.",
        "task_completion judge",
    ]


def _broken_catalog(tmp_path: Path) -> Path:
    """The example catalog with a broken support revision: refund_request disabled, order_lookup taken away from
    order_status, general_help no longer allowed to record variables."""
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target)
    support = yaml.safe_load((target / "support.yaml").read_text())
    for procedure in support["revisions"][0]["procedures"]:
        if procedure["name"] == "refund_request":
            procedure["enabled"] = False
        if procedure["name"] == "order_status":
            procedure["tools"] = [t for t in procedure["tools"] if t != "order_lookup"]
        if procedure["name"] == "general_help":
            procedure["tools"] = ["end_call"]
    (target / "support.yaml").write_text(yaml.safe_dump(support, sort_keys=False))
    return target


async def test_a_broken_revision_fails_the_matching_expectations_with_reasons(
    settings: Settings, tmp_path: Path
) -> None:
    catalog = _broken_catalog(tmp_path)
    broken = runner(settings, catalog)
    refund = await broken.run(load(SCENARIOS / "support-refund-request.yaml"))
    assert not refund.passed
    assert "procedure refund_request: the call chose general_help (always_on)" in refund.failures
    status = await broken.run(load(SCENARIOS / "support-order-status.yaml"))
    assert not status.passed
    [failure] = [f for f in status.failures if f.startswith("tool order_lookup")]
    assert "never called" in failure
    callback = await broken.run(load(SCENARIOS / "support-callback.yaml"))
    assert "variable wants_callback = True: recorded False" in callback.failures
    # the expectations the breakage does not touch still hold
    assert any(c.passed and c.expectation == "end reason participant_left" for c in status.checks)


async def test_a_failed_judge_fails_the_scenario_and_shows_the_spread(settings: Settings) -> None:
    models = Models(judge=[("pass", "asked first"), ("fail", "did not ask"), ("fail", "no order number")])
    result = await runner(settings, models=models).run(load(SCENARIOS / "support-refund-request.yaml"))
    assert all(c.passed for c in result.checks)
    assert not result.passed
    assert result.failures == [
        "rubric 'The agent asks for the order number before it explains how the refund will be paid.': "
        "1 pass / 2 fail of 3 (needs 2)"
    ]


@pytest.mark.parametrize(
    ("answers", "runs", "threshold", "passed"),
    [
        ([("pass", "a"), ("fail", "b"), ("pass", "c")], 3, 2, True),
        ([("pass", "a"), ("fail", "b"), ("maybe", "c")], 3, 2, False),
        ([("pass", "a"), ("pass", "b"), ("fail", "c")], 3, None, False),  # no threshold: every run must pass
        ([("maybe", "a")], 1, None, False),  # uncertain is not a pass
    ],
)
async def test_judge_threshold(answers: list[tuple[str, str]], runs: int, threshold: int | None, passed: bool) -> None:
    from livekit.agents import llm

    item = RubricItem(criteria="polite", runs=runs, pass_threshold=threshold)
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="hello")
    result = await judge_item(item, ctx, FakeLLM(scripted(verdicts(*answers))))
    assert len(result.runs) == runs
    assert result.passed is passed
    assert sorted(r.reasoning for r in result.runs) == sorted(a[1] for a in answers)


async def test_a_judge_that_gives_no_verdict_is_an_error_run_not_a_pass() -> None:
    from livekit.agents import llm

    result = await judge_item(
        RubricItem(criteria="polite", runs=2, pass_threshold=1), llm.ChatContext(), FakeLLM(["I think it passes"])
    )
    assert [r.verdict for r in result.runs] == ["error", "error"] and not result.passed


def test_schema_refuses_what_could_never_run() -> None:
    with pytest.raises(ValueError, match="either turns"):
        Scenario.model_validate({"name": "x", "agent_id": "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01", "caller": {}})
    with pytest.raises(ValueError, match="pass_threshold 4 is more than runs 3"):
        RubricItem(criteria="c", runs=3, pass_threshold=4)
    with pytest.raises(ValueError, match="not a regular expression"):
        Scenario.model_validate(
            {
                "name": "x",
                "agent_id": "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01",
                "caller": {"turns": [{"say": "hi"}]},
                "expect": {"said": ["(unclosed"]},
            }
        )


def test_catalog_problems_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "scenario",
                "name": "bad",
                "agent_id": "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01",
                "caller": {"turns": [{"say": "hi"}]},
                "expect": {"procedure": "refunds", "tools": [{"name": "teleport"}], "variables": {"mood": "x"}},
            }
        )
    )
    _, problems = load_scenarios([path], load_catalog(EXAMPLE_CATALOG))
    fields = {p.field: p.reason for p in problems}
    assert fields["expect.procedure"].startswith("'refunds' is not a procedure of the target")
    assert fields["expect.tools[0].name"].startswith("'teleport' is not a tool")
    assert fields["expect.variables.mood"].startswith("not a context variable")


async def test_junit_and_html_reports(settings: Settings, tmp_path: Path) -> None:
    good = await runner(settings).run(load(SCENARIOS / "support-refund-request.yaml"))
    bad = await runner(settings, _broken_catalog(tmp_path)).run(load(SCENARIOS / "support-order-status.yaml"))
    xml = ET.fromstring(junit_xml([good, bad]))
    suites = {s.get("name"): s for s in xml.iter("testsuite")}
    assert suites["support-refund-request"].get("failures") == "0"
    assert suites["support-order-status"].get("failures") == "1"
    failed = [c for c in suites["support-order-status"].iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["tool order_lookup(order_number matches /^\\D*1042\\D*$/) called"]
    assert int(xml.get("tests", "0")) == sum(len(list(s.iter("testcase"))) for s in suites.values())

    page = html_report([good, bad])
    assert "1 of 2 scenarios passed" in page
    assert "Hi Dana, thanks for calling Acme support." in page
    assert "<svg" in page and "budget 4000 ms" in page
    assert "3 pass of 3 (needs 2)" in page
    assert "refund_request" in page and "order_lookup" not in page.split("support-order-status")[0]


def test_html_escapes_what_the_call_said() -> None:
    result = ScenarioResult(scenario="x", file="x.yaml", mode="text", target="agent")
    result.observed.transcript.append(Line(role="assistant", text="<script>alert(1)</script>"))
    page = html_report([result])
    assert "<script>alert" not in page and "&lt;script&gt;" in page


async def test_run_all_keeps_order_and_runs_in_parallel(settings: Settings) -> None:
    files = [load(p) for p in SHIPPED if "persona" not in p.name]
    seen: list[str] = []
    results = await run_all(files, runner(settings), parallel=3, on_done=lambda n, r: seen.append(r.scenario))
    assert [r.scenario for r in results] == [f.scenario.name for f in files]
    assert sorted(seen) == sorted(r.scenario for r in results)
    assert all(r.passed for r in results), [r.failures for r in results]


def test_command_exit_codes(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]  # capsys
    from cli import main as cli_main

    catalogs = {"good": EXAMPLE_CATALOG, "broken": _broken_catalog(tmp_path)}
    chosen: dict[str, Path] = {}

    def fake_runner(cls: type[TextRunner], cli_settings: Any, models: Any) -> TextRunner:
        return runner(settings, chosen["catalog"])

    monkeypatch.setattr(TextRunner, "from_settings", classmethod(fake_runner))
    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    scenario = str(SCENARIOS / "support-refund-request.yaml")
    chosen["catalog"] = catalogs["good"]
    junit, html = tmp_path / "junit.xml", tmp_path / "report.html"
    code = cli_main.main(["simulate", scenario, "--junit", str(junit), "--report", str(html)])
    out = capsys.readouterr()
    assert code == 0, out
    assert "1 of 1 scenario(s) passed" in out.out and "1/1 PASS support-refund-request" in out.err
    assert junit.read_text().startswith("<?xml") and html.read_text().startswith("<!doctype html>")

    chosen["catalog"] = catalogs["broken"]
    code = cli_main.main(["simulate", scenario])
    out = capsys.readouterr()
    assert code == 1
    assert "procedure refund_request: the call chose general_help" in out.out

    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: scenario\nname: bad\ncaller: {turns: [{say: hi}]}\n")
    assert cli_main.main(["simulate", str(bad)]) == 2
    assert "give exactly one of agent_id and team_id" in capsys.readouterr().err


def test_check_reports_a_scenario_in_the_catalog_that_could_never_pass(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,  # type: ignore[no-untyped-def]  # capsys
) -> None:
    from cli import main as cli_main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test-not-real")
    monkeypatch.setenv("TOOL_ACME_ORDERS_TOKEN", "not-real")
    catalog = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, catalog)
    assert cli_main.main(["check", "--catalog", str(catalog)]) == 0, capsys.readouterr()
    capsys.readouterr()
    scenario = yaml.safe_load((SCENARIOS / "support-refund-request.yaml").read_text())
    scenario["expect"]["procedure"] = "refunds"
    (catalog / "scenarios" / "support-refund-request.yaml").write_text(yaml.safe_dump(scenario))
    assert cli_main.main(["check", "--catalog", str(catalog)]) == 1
    out = capsys.readouterr().out
    assert "support-refund-request.yaml: expect.procedure: 'refunds' is not a procedure of the target" in out
