"""`voice-worker simulate --mode voice` on the real path: the command mints a `session_type: simulation` call, its
caller participant joins a real livekit-server room, the real worker process answers, and the scenario is judged
from the session record and the agent's attributes.

The worker's providers are the usual doubles (tests/e2e/providers.py) with the text-mode scenario models behind
them (tests/e2e/wire_brain.py); the caller's voice is the caller-line double (tests/e2e/caller_line.py), set as
each scenario's `caller.voice`: only that changes in the shipped scenario files.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.settings import EXAMPLE_CATALOG
from records.outcome import MemoryState, SummaryState
from tests.e2e.caller_line import CallerLineDouble, caller_line
from tests.e2e.providers import ProviderDoubles
from tests.e2e.session_records import wait_for_record
from tests.e2e.wire_brain import WireBrain
from tests.e2e.worker_process import ROOT, VOICE_WORKER, WorkerEnv, WorkerProcess

SCENARIOS = EXAMPLE_CATALOG / "scenarios"
# every shipped scenario: procedures, tools with arguments, recorded variables, a team's handoff, a persona, judges
PASSING = tuple(sorted(p.name for p in SCENARIOS.glob("*.yaml")))
SESSION = re.compile(r"session ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@pytest.fixture(scope="module")
def brain() -> WireBrain:
    return WireBrain()


@pytest.fixture(scope="module")
def line(doubles: ProviderDoubles, speech_dir: Path) -> Iterator[CallerLineDouble]:
    double = caller_line(doubles, speech_dir)
    yield double
    doubles.run(double.aclose())


def voiced(name: str, line: CallerLineDouble, target: Path, expect: dict[str, Any] | None = None) -> Path:
    """The shipped scenario `name` with its caller's voice on the caller-line double (and `expect` changed)."""
    document = yaml.safe_load((SCENARIOS / name).read_text())
    document["caller"]["voice"] = {
        "tts": {"provider": "deepgram", "model": "aura-2-andromeda-en", "base_url": line.speak_url},
        "stt": {"provider": "deepgram", "model": "nova-3", "base_url": line.listen_url},
    }
    document["expect"].update(expect or {})
    target.mkdir(parents=True, exist_ok=True)
    written = target / name
    written.write_text(yaml.safe_dump(document, sort_keys=False))
    return written


def simulate(world: WorkerEnv, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VOICE_WORKER), "simulate", "--mode", "voice", *map(str, args)],
        env=world.as_environ(),
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )


@pytest.mark.timeout(600)
async def test_shipped_scenarios_pass_as_real_calls(
    worker: WorkerProcess,
    world: WorkerEnv,
    doubles: ProviderDoubles,
    brain: WireBrain,
    line: CallerLineDouble,
    tmp_path: Path,
) -> None:
    brain.reset()
    for name in PASSING:
        voiced(name, line, tmp_path / "scenarios")
    junit, report = tmp_path / "junit.xml", tmp_path / "report.html"
    out = simulate(world, tmp_path / "scenarios", "--junit", junit, "--report", report)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{worker.log_tail()}"
    assert f"{len(PASSING)} of {len(PASSING)} scenario(s) passed" in out.stdout

    suites = ET.parse(junit).getroot()
    assert suites.get("failures") == "0" and suites.get("errors") == "0"
    cases = {(s.get("name"), c.get("name")) for s in suites for c in s}
    assert (
        "support-callback",
        "tool record_variable(name = 'wants_callback', value matches /(?i)^(true|yes)$/) called",
    ) in cases
    assert ("support-callback", "variable wants_callback = True") in cases

    html = report.read_text()
    assert "voice mode" in html and "As the caller heard it" in html
    # the caller heard the agent's answers through its STT (the caller line transcribes what the agent's TTS said)
    assert "five business days" in html.split("As the caller heard it", 1)[1]
    # each call is on record as a simulation, with post-call skipped
    sessions = SESSION.findall(html)
    assert len(sessions) == len(PASSING)
    for session_id in sessions:
        record = await wait_for_record(world.database_url, session_id)
        assert record.session_type.value == "simulation"
        assert (record.summary_state, record.memory_state) == (SummaryState.SUPPRESSED, MemoryState.SUPPRESSED)
        assert record.end_reason is not None and record.end_reason.value == "participant_left"
    # the agent's STT heard exactly the caller's scripted lines, spoken by the caller's TTS
    assert "I have a question about my account but I am driving. Can someone call me back later?" in line.caller_lines


@pytest.mark.timeout(600)
async def test_broken_expectations_fail_with_what_the_call_did(
    worker: WorkerProcess, world: WorkerEnv, brain: WireBrain, line: CallerLineDouble, tmp_path: Path
) -> None:
    brain.reset()
    scenarios = tmp_path / "scenarios"
    voiced("support-refund-request.yaml", line, scenarios, {"procedure": "order_status", "rubric": []})
    voiced(
        "support-callback.yaml",
        line,
        scenarios,
        {"tools": [{"name": "record_variable", "arguments": {"name": "wants_callback", "value": False}}]},
    )
    out = simulate(world, scenarios)
    assert out.returncode == 1, f"{out.stdout}\n{out.stderr}"
    assert "0 of 2 scenario(s) passed" in out.stdout
    assert "procedure order_status: the call chose refund_request" in out.stdout, out.stdout
    # the arguments came from the agent's voice_worker.simulation attribute: the failure names them
    assert (
        "tool record_variable(name = 'wants_callback', value = False) called: called, but with "
        "(name='wants_callback', value='true')" in out.stdout
    ), out.stdout
