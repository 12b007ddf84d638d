"""Dispatches the worker must refuse, sent through a real LiveKit server: a grant signed with another secret, a
tampered grant, an expired one, one naming an agent the catalog does not have. No agent ever joins those rooms
(asked of the server's RoomService), the worker logs the reason code, and a genuine call right after is served."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from livekit import api, rtc

from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from tests.e2e.caller import Caller
from tests.e2e.conftest import SUPPORT_AGENT
from tests.e2e.worker_process import WorkerEnv, WorkerProcess

# How long after the room exists an agent would have joined if the dispatch had been accepted: a served call's
# agent joins in under a second here (tests/e2e/test_call.py asserts < 5 s).
NO_AGENT_WINDOW_S = 4.0


def _grant(
    world: WorkerEnv, *, secret: str | None = None, agent_id: str = SUPPORT_AGENT, now: float | None = None
) -> str:
    return mint_dispatch_metadata(
        DispatchRequest(session_id=uuid.uuid4(), session_type="test", agent_id=uuid.UUID(agent_id)),
        secret=secret or world.signing_secret,
        issuer="voice-worker-door",
        lifetime=timedelta(minutes=5),
        now=now,
    )


def _tampered(world: WorkerEnv) -> str:
    """A genuine grant whose payload was edited (another agent) without re-signing: what a browser could try."""
    token = json.loads(_grant(world))["grant"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["agent_id"] = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02"
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return json.dumps({"grant": f"{header}.{edited}.{signature}"})


CASES: dict[str, tuple[str, Callable[[WorkerEnv], str]]] = {
    "forged": ("bad_signature", lambda w: _grant(w, secret="another-secret-" + "x" * 40)),
    "tampered": ("bad_signature", _tampered),
    "expired": ("expired", lambda w: _grant(w, now=time.time() - 3600)),
    "unknown_agent": ("unknown_agent", lambda w: _grant(w, agent_id=str(uuid.uuid4()))),
}


def _token(world: WorkerEnv, room: str, metadata: str) -> str:
    livekit = world.livekit
    return (
        api.AccessToken(livekit.api_key, livekit.api_secret)
        .with_identity("web-" + uuid.uuid4().hex[:8])
        .with_ttl(timedelta(minutes=5))
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_room_config(
            api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=world.agent_name, metadata=metadata)])
        )
        .to_jwt()
    )


async def _agents_in(world: WorkerEnv, room: str) -> list[str]:
    livekit = world.livekit
    async with api.LiveKitAPI(livekit.http_url, livekit.api_key, livekit.api_secret) as lk:
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return [p.identity for p in listed.participants if p.kind == api.ParticipantInfo.Kind.AGENT]


def _refusals_for(worker: WorkerProcess, room: str) -> list[str]:
    return [
        str(r.get("message"))
        for r in worker.log_records()
        if "dispatch refused" in str(r.get("message", "")) and room in str(r.get("message", ""))
    ]


@pytest.mark.parametrize("case", list(CASES))
async def test_refused_dispatch_never_joins_and_next_call_is_served(
    case: str, worker: WorkerProcess, world: WorkerEnv
) -> None:
    reason, make_metadata = CASES[case]
    room = f"call-e2e-{case}-{uuid.uuid4().hex[:8]}"
    caller = Caller(world.livekit.url, _token(world, room, make_metadata(world)))
    await caller.connect()
    try:
        deadline = time.monotonic() + 10
        while not _refusals_for(worker, room):
            assert time.monotonic() < deadline, f"no refusal logged for {room}:\n{worker.log_tail()}"
            await asyncio.sleep(0.2)
        refusal = _refusals_for(worker, room)[0]
        assert f": {reason}:" in refusal, refusal
        await asyncio.sleep(max(0.0, NO_AGENT_WINDOW_S - (time.monotonic() - (caller.connected_at or 0))))
        assert await _agents_in(world, room) == []
        assert caller.agent_joined_at is None
        assert not any(
            p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT for p in caller.room.remote_participants.values()
        )
    finally:
        await caller.hang_up()

    # the refusal cost nothing: a genuine call right after is served
    minted = world.web_call("--agent-id", SUPPORT_AGENT)
    genuine = Caller(minted["livekit_url"], minted["access_token"])
    await genuine.connect()
    try:
        assert await genuine.wait_agent(timeout=5) < 5
        assert await _agents_in(world, minted["room_name"])
    finally:
        await genuine.hang_up()
