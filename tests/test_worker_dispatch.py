"""The real worker (`create_server` + `DispatchGate`) against the LiveKit protocol double.

It registers for explicit dispatch under its agent name; a valid signed dispatch is accepted with the agent's
identity and the session attributes; every bad dispatch is refused in the main process, so no job executor
is ever created for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from livekit.agents import AgentServer, JobExecutorType

from catalog.loader import CatalogStore
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from tests.doubles.livekit_server import LiveKitServerDouble
from worker.server import DispatchGate, create_server
from worker.settings import Settings

API_KEY = "devkey"
API_SECRET = "worker-test-livekit-secret-0123456789abcdef"
SIGNING_SECRET = "worker-test-dispatch-signing-secret-0123456789"
AGENT_NAME = "voice-worker-under-test"
SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
SALES = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02")
TEAM = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")
TIMEOUT = 10.0


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """The example catalog with the sales agent disabled."""
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target)
    sales = target / "sales.yaml"
    sales.write_text(
        sales.read_text().replace("enabled: true\nactive_revision_id", "enabled: false\nactive_revision_id", 1)
    )
    return target


@pytest.fixture
def settings(catalog_dir: Path) -> Settings:
    return Settings(
        _env_file=None,
        VOICE_WORKER_MODE="dev",
        AGENT_NAME=AGENT_NAME,
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        DISPATCH_SIGNING_SECRET=SIGNING_SECRET,
        CATALOG_PATH=str(catalog_dir),
        OPENAI_API_KEY="sk-test-not-real",
        DEEPGRAM_API_KEY="dg-test-not-real",
        HEALTH_HOST="127.0.0.1",
        HEALTH_PORT=0,
    )


@pytest.fixture
def restore_environ() -> Iterator[None]:
    # AgentServer.run() exports LIVEKIT_URL/API_KEY/API_SECRET into os.environ.
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


@dataclass
class RunningWorker:
    server: AgentServer
    gate: DispatchGate
    executors_created: list[Any] = field(default_factory=list)


@pytest.fixture
async def lk() -> AsyncIterator[LiveKitServerDouble]:
    async with LiveKitServerDouble(api_key=API_KEY, api_secret=API_SECRET) as double:
        yield double


@pytest.fixture
async def worker(lk: LiveKitServerDouble, settings: Settings, restore_environ: None) -> AsyncIterator[RunningWorker]:
    settings = settings.model_copy(update={"livekit_url": lk.url})
    gate = DispatchGate(settings, CatalogStore(settings.catalog_path))
    server = create_server(
        settings,
        gate=gate,
        job_executor_type=JobExecutorType.THREAD,
        num_idle_processes=0,
    )
    running = RunningWorker(server=server, gate=gate)
    task = asyncio.create_task(server.run(devmode=True))
    await lk.wait_registered(timeout=TIMEOUT)
    server._proc_pool.on("process_created", running.executors_created.append)
    try:
        yield running
    finally:
        await asyncio.wait_for(server.aclose(), TIMEOUT)
        await asyncio.wait_for(task, TIMEOUT)


def grant(secret: str = SIGNING_SECRET, **overrides: Any) -> str:
    request = DispatchRequest(
        session_id=overrides.pop("session_id", uuid.uuid4()),
        session_type=overrides.pop("session_type", "test"),
        agent_id=overrides.pop("agent_id", SUPPORT),
        team_id=overrides.pop("team_id", None),
        context_variables=overrides.pop("context_variables", {"customer_name": "Dana"}),
    )
    return mint_dispatch_metadata(request, secret=secret, issuer="voice-worker-door", **overrides)


def raw(**claims: Any) -> str:
    now = int(time.time())
    payload = {
        "ver": 1,
        "iss": "voice-worker-door",
        "iat": now,
        "exp": now + 300,
        "session_id": str(uuid.uuid4()),
        "session_type": "test",
        "agent_id": str(SUPPORT),
        "context_variables": {},
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return json.dumps({"grant": jwt.encode(payload, SIGNING_SECRET, algorithm="HS256")})


def tampered() -> str:
    token = json.loads(grant())["grant"]
    header, _, signature = token.split(".")
    payload = jwt.decode(token, options={"verify_signature": False})
    payload["agent_id"] = str(SALES)
    body = jwt.encode(payload, "x" * 32, algorithm="HS256").split(".")[1]
    return json.dumps({"grant": f"{header}.{body}.{signature}"})


async def test_registers_for_explicit_dispatch_under_its_agent_name(lk: LiveKitServerDouble, worker: RunningWorker):
    assert lk.registrations[-1].agent_name == AGENT_NAME


async def test_valid_dispatch_is_accepted_with_session_attributes(lk: LiveKitServerDouble, worker: RunningWorker):
    session = uuid.uuid4()
    answer = await lk.offer_job(metadata=grant(session_id=session), agent_name=AGENT_NAME, timeout=TIMEOUT)
    assert answer.available
    assert answer.participant_identity == f"agent-{session.hex[:12]}"
    assert answer.participant_name == "Acme Support"
    assert answer.participant_attributes["voice_worker.session_id"] == str(session)
    assert answer.participant_attributes["voice_worker.agent_id"] == str(SUPPORT)
    assert answer.participant_attributes["voice_worker.session_type"] == "test"
    # Answer the worker's wait for an assignment; the job itself cannot join a room without an SFU.
    await lk.assign_job(answer.job_id)
    await lk.terminate_job(answer.job_id)
    assert worker.gate.refusals == {}


async def test_team_dispatch_is_accepted_for_the_initial_member(lk: LiveKitServerDouble, worker: RunningWorker):
    answer = await lk.offer_job(metadata=grant(agent_id=None, team_id=TEAM), agent_name=AGENT_NAME, timeout=TIMEOUT)
    assert answer.available
    assert answer.participant_attributes["voice_worker.team_id"] == str(TEAM)
    assert answer.participant_attributes["voice_worker.agent_id"] == str(SUPPORT)
    await lk.assign_job(answer.job_id)
    await lk.terminate_job(answer.job_id)


BAD_DISPATCHES = {
    "forged_signature": (lambda: grant(secret="someone-elses-secret-0123456789abcdef"), "bad_signature"),
    "tampered_payload": (tampered, "bad_signature"),
    "expired": (lambda: grant(now=time.time() - 3600), "expired"),
    "wrong_session_type": (lambda: raw(session_type="production"), "invalid_claims"),
    "both_ids": (lambda: raw(team_id=str(TEAM)), "both_agent_and_team"),
    "neither_id": (lambda: raw(agent_id=None), "neither_agent_nor_team"),
    "unknown_agent": (lambda: grant(agent_id=uuid.uuid4()), "unknown_agent"),
    "disabled_agent": (lambda: grant(agent_id=SALES, context_variables={}), "disabled_agent"),
    "non_json_metadata": (lambda: "agent=support", "malformed_metadata"),
    "uncoercible_seed": (lambda: grant(context_variables={"order_count": "many"}), "invalid_context_variables"),
}


@pytest.mark.parametrize("case", sorted(BAD_DISPATCHES))
async def test_bad_dispatch_is_refused_before_a_job_process_is_spent(
    case: str, lk: LiveKitServerDouble, worker: RunningWorker
):
    make, reason = BAD_DISPATCHES[case]
    answer = await lk.offer_job(metadata=make(), agent_name=AGENT_NAME, timeout=TIMEOUT)
    assert not answer.available and answer.terminate
    assert worker.gate.refusals == {reason: 1}
    assert worker.executors_created == []
    assert worker.server.active_jobs == []
    assert lk.assignment_count == 0
    assert lk.job_status_history(answer.job_id) == []


async def test_missing_provider_key_is_refused_with_the_variable_named(
    lk: LiveKitServerDouble, settings: Settings, restore_environ: None, caplog: pytest.LogCaptureFixture
):
    keyless = settings.model_copy(update={"livekit_url": lk.url, "deepgram_api_key": None})
    gate = DispatchGate(keyless, CatalogStore(keyless.catalog_path))
    server = create_server(keyless, gate=gate, job_executor_type=JobExecutorType.THREAD, num_idle_processes=0)
    task = asyncio.create_task(server.run(devmode=True))
    try:
        await lk.wait_registered(timeout=TIMEOUT)
        answer = await lk.offer_job(metadata=grant(), agent_name=AGENT_NAME, timeout=TIMEOUT)
        assert not answer.available
        assert gate.refusals == {"invalid_pipeline": 1}
        refusal = next(r.getMessage() for r in caplog.records if "dispatch refused" in r.getMessage())
        assert "DEEPGRAM_API_KEY" in refusal and "stt_chain[0]" in refusal
    finally:
        await asyncio.wait_for(server.aclose(), TIMEOUT)
        await asyncio.wait_for(task, TIMEOUT)
