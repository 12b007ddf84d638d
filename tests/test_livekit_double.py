"""A real livekit-agents `AgentServer` against the LiveKit server double, over a real websocket.

The worker runs jobs on the thread executor with no idle processes, so nothing is forked and a job
costs one thread that exists only after an assignment.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest
from livekit.agents import __version__ as agents_version

from tests.doubles.livekit_server import LiveKitServerDouble

API_KEY = "devkey"
# 32+ bytes so PyJWT does not warn about a short HMAC key
API_SECRET = "double-test-secret-0123456789abcdef"
WRONG_SECRET = "not-the-double-secret-0123456789abcdef"
AGENT_NAME = "probe"
TIMEOUT = 10.0


@dataclass
class Probe:
    server: AgentServer
    # (metadata, job id) for every entrypoint run; appended from the job runner's thread
    entered: list[tuple[str, str]] = field(default_factory=list)
    executors_created: list[Any] = field(default_factory=list)


def _build_server(url: str, api_secret: str, **options: Any) -> Probe:
    server = AgentServer(
        ws_url=url,
        api_key=API_KEY,
        api_secret=api_secret,
        host="127.0.0.1",
        port=0,
        job_executor_type=JobExecutorType.THREAD,
        num_idle_processes=0,
        **options,
    )
    probe = Probe(server=server)

    async def on_request(req: JobRequest) -> None:
        if req.job.metadata in ("yes", "hold"):
            await req.accept(
                identity=f"probe-{req.id}",
                name="Probe Agent",
                attributes={"role": "probe"},
            )
        else:
            await req.reject()

    @server.rtc_session(agent_name=AGENT_NAME, on_request=on_request)
    async def entrypoint(ctx: JobContext) -> None:
        probe.entered.append((ctx.job.metadata, ctx.job.id))
        # there is no SFU behind the double, so the job ends itself instead of ctx.connect();
        # a "hold" job stays running until the server terminates it
        if ctx.job.metadata != "hold":
            ctx.shutdown("probe finished")

    return probe


@pytest.fixture
def restore_environ() -> Iterator[None]:
    # AgentServer.run() exports LIVEKIT_URL/API_KEY/API_SECRET (and SSL_CERT_FILE) into os.environ
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture
async def lk() -> AsyncIterator[LiveKitServerDouble]:
    async with LiveKitServerDouble(api_key=API_KEY, api_secret=API_SECRET) as double:
        yield double


@pytest.fixture
async def probe(lk: LiveKitServerDouble, restore_environ: None) -> AsyncIterator[Probe]:
    tasks_before = asyncio.all_tasks()
    probe = _build_server(lk.url, API_SECRET)
    run_task = asyncio.create_task(probe.server.run(devmode=True))
    await lk.wait_registered(timeout=TIMEOUT)
    # no public hook reports executor creation; the pool's event is the direct evidence of
    # whether an offer spent a job executor
    probe.server._proc_pool.on("process_created", probe.executors_created.append)
    try:
        yield probe
    finally:
        await asyncio.wait_for(probe.server.aclose(), TIMEOUT)
        await asyncio.wait_for(run_task, TIMEOUT)
        await lk.wait_disconnected(timeout=TIMEOUT)
        leftover = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
        assert not leftover, f"tasks left running after aclose(): {leftover}"


async def test_worker_registers_with_its_agent_name(lk: LiveKitServerDouble, probe: Probe) -> None:
    reg = lk.registrations[-1]
    assert reg.agent_name == AGENT_NAME
    assert reg.job_type == "JT_ROOM"
    assert reg.version == agents_version
    assert reg.permissions.agent and reg.permissions.can_publish

    # the worker holds back status updates until it has handled the register response
    await lk.wait_for(lambda: bool(lk.worker_statuses), TIMEOUT)
    first = lk.worker_statuses[0]
    assert (first.status, first.job_count) == ("WS_AVAILABLE", 0)
    assert probe.server.id == reg.worker_id  # the worker adopted the id the double assigned
    assert lk.connected


async def test_accepted_offer_carries_the_handler_identity_and_runs_one_job(
    lk: LiveKitServerDouble, probe: Probe
) -> None:
    answer = await lk.offer_job(metadata="yes", room_name="room-1", agent_name=AGENT_NAME, timeout=TIMEOUT)
    assert answer.available and not answer.terminate
    assert answer.participant_identity == f"probe-{answer.job_id}"
    assert answer.participant_name == "Probe Agent"
    assert answer.participant_attributes["role"] == "probe"

    assignment = await lk.assign_job(answer.job_id)
    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(assignment.token)
    assert claims.identity == answer.participant_identity
    assert claims.kind == "agent"
    assert claims.video is not None and claims.video.room_join and claims.video.room == "room-1"

    await lk.wait_job_status(answer.job_id, "JS_SUCCESS", timeout=TIMEOUT)
    assert lk.job_status_history(answer.job_id) == ["JS_RUNNING", "JS_SUCCESS"]
    assert probe.entered == [("yes", answer.job_id)]
    assert len(probe.executors_created) == 1
    assert lk.assignment_count == 1
    assert probe.server.active_jobs == []


async def test_rejected_offer_spends_no_executor(lk: LiveKitServerDouble, probe: Probe) -> None:
    rejected = await lk.offer_job(metadata="no", agent_name=AGENT_NAME, timeout=TIMEOUT)
    assert not rejected.available
    assert rejected.terminate  # JobRequest.reject() defaults to terminate=True
    assert probe.server.active_jobs == []
    assert probe.executors_created == []
    with pytest.raises(ValueError, match="not accepted"):
        await lk.assign_job(rejected.job_id)

    # An accepted job afterwards proves the executor accounting above can see a job at all:
    # the pool creates exactly one executor, and it is for the accepted job.
    accepted = await lk.offer_job(metadata="yes", agent_name=AGENT_NAME, timeout=TIMEOUT)
    await lk.assign_job(accepted.job_id)
    await lk.wait_job_status(accepted.job_id, "JS_SUCCESS", timeout=TIMEOUT)
    assert len(probe.executors_created) == 1
    assert [e for e in probe.entered if e[1] == rejected.job_id] == []
    assert lk.job_status_history(rejected.job_id) == []
    assert [a.job_id for a in lk.assignments] == [accepted.job_id]


async def test_termination_ends_a_running_job(lk: LiveKitServerDouble, probe: Probe) -> None:
    answer = await lk.offer_job(metadata="hold", agent_name=AGENT_NAME, timeout=TIMEOUT)
    await lk.assign_job(answer.job_id)
    await lk.wait_job_status(answer.job_id, "JS_RUNNING", timeout=TIMEOUT)
    assert [j.job.id for j in probe.server.active_jobs] == [answer.job_id]

    await lk.terminate_job(answer.job_id)
    await lk.wait_job_status(answer.job_id, "JS_SUCCESS", timeout=TIMEOUT)
    assert probe.server.active_jobs == []


async def test_worker_reregisters_after_the_server_drops_it(lk: LiveKitServerDouble, probe: Probe) -> None:
    first = lk.registrations[-1]
    await lk.drop_connection()
    await lk.wait_for(lambda: len(lk.registrations) == 2, TIMEOUT)
    second = lk.registrations[-1]
    assert second.agent_name == AGENT_NAME
    assert second.worker_id != first.worker_id
    assert [worker_id for worker_id, _ in lk.disconnections] == [first.worker_id]

    answer = await lk.offer_job(metadata="no", agent_name=AGENT_NAME, timeout=TIMEOUT)
    assert not answer.available


async def test_worker_with_a_wrong_secret_is_refused(lk: LiveKitServerDouble, restore_environ: None) -> None:
    # max_retry=0: the first refusal is final, so run() fails instead of backing off for minutes
    probe = _build_server(lk.url, WRONG_SECRET, max_retry=0)
    try:
        with pytest.raises(RuntimeError, match="failed to connect to livekit"):
            await asyncio.wait_for(probe.server.run(devmode=True), TIMEOUT)
    finally:
        await asyncio.wait_for(probe.server.aclose(), TIMEOUT)

    assert [r.reason for r in lk.rejected_connections] == ["invalid token: InvalidSignatureError"]
    assert lk.registrations == []
    assert not lk.connected


@pytest.mark.parametrize(
    ("grants", "expected_reason"),
    [
        (api.VideoGrants(agent=True), None),
        (api.VideoGrants(room_list=True), "token lacks the agent grant"),
    ],
)
async def test_double_requires_the_agent_grant(
    lk: LiveKitServerDouble, grants: api.VideoGrants, expected_reason: str | None
) -> None:
    token = api.AccessToken(API_KEY, API_SECRET).with_grants(grants).to_jwt()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        if expected_reason is None:
            async with session.ws_connect(f"{lk.url}/agent", headers=headers) as ws:
                assert not ws.closed
            assert lk.rejected_connections == []
        else:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await session.ws_connect(f"{lk.url}/agent", headers=headers)
            assert err.value.status == 401
            assert [r.reason for r in lk.rejected_connections] == [expected_reason]


async def test_double_refuses_a_missing_token(lk: LiveKitServerDouble) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(f"{lk.url}/agent")
    assert err.value.status == 401
    assert [r.reason for r in lk.rejected_connections] == ["missing bearer token"]
