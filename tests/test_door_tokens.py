"""Tokens from both routes: LiveKit accepts them, the worker accepts their dispatch grant, edits break them,
and no secret leaks into a response, a log line or the dispatch metadata.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from livekit import api

from contract.dispatch import DispatchRejected, RejectReason, verify_dispatch_metadata
from door.app import create_app
from tests.doubles.door_sessions import RecordingSessionCreator
from tests.doubles.door_world import (
    AGENT_NAME,
    ALL_SECRETS,
    FRONT_DESK_TEAM,
    ISSUER,
    KEY_ALL,
    LIVEKIT_KEY,
    LIVEKIT_SECRET,
    SIGNING_SECRET,
    SUPPORT_AGENT,
    FakeClock,
    feather_headers,
    make_settings,
    revdesk_headers,
    revdesk_path,
)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(tmp_path), session_creator=RecordingSessionCreator(), clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as c:
        yield c


async def _feather_token(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    response = await client.post("/v1/voice/web-call", json=body, headers=feather_headers())
    assert response.status_code == 200, response.text
    return response.json()["access_token"], response.json()


async def _revdesk_token(client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    response = await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())
    assert response.status_code == 200, response.text
    return response.json()["data"]["token"], response.json()["data"]


def _verify(token: str) -> api.Claims:
    return api.TokenVerifier(LIVEKIT_KEY, LIVEKIT_SECRET).verify(token)


def _dispatch(claims: api.Claims) -> api.RoomAgentDispatch:
    assert claims.room_config is not None
    [dispatch] = claims.room_config.agents
    return dispatch


async def test_feather_agent_token_verifies_and_dispatches_our_agent(client: httpx.AsyncClient) -> None:
    token, body = await _feather_token(
        client, {"agent_id": str(SUPPORT_AGENT), "context_variables": {"tier": "platinum"}}
    )
    claims = _verify(token)
    assert claims.video is not None and claims.video.room_join and claims.video.room == body["room_name"]
    dispatch = _dispatch(claims)
    assert dispatch.agent_name == AGENT_NAME
    grant = verify_dispatch_metadata(dispatch.metadata, secret=SIGNING_SECRET, issuer=ISSUER)
    assert grant.agent_id == SUPPORT_AGENT and grant.team_id is None
    assert grant.session_id == uuid.UUID(body["session_id"])
    assert grant.session_type == "test"
    assert grant.context_variables == {"tier": "platinum"}
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == 300  # the 5-minute join token of both contracts


async def test_feather_team_token_names_the_team(client: httpx.AsyncClient) -> None:
    token, body = await _feather_token(client, {"team_id": str(FRONT_DESK_TEAM)})
    grant = verify_dispatch_metadata(_dispatch(_verify(token)).metadata, secret=SIGNING_SECRET, issuer=ISSUER)
    assert (grant.agent_id, grant.team_id) == (None, FRONT_DESK_TEAM)
    assert grant.session_id == uuid.UUID(body["session_id"])


async def test_revdesk_token_verifies_and_dispatches_our_agent(client: httpx.AsyncClient) -> None:
    token, data = await _revdesk_token(client)
    claims = _verify(token)
    assert claims.video is not None and claims.video.room == data["room_name"]
    dispatch = _dispatch(claims)
    assert dispatch.agent_name == AGENT_NAME
    grant = verify_dispatch_metadata(dispatch.metadata, secret=SIGNING_SECRET, issuer=ISSUER)
    assert grant.agent_id == uuid.UUID(data["agent_id"]) == SUPPORT_AGENT
    assert grant.session_type == "test"


async def test_every_call_gets_a_fresh_room_and_session(client: httpx.AsyncClient) -> None:
    bodies = [(await _feather_token(client, {"agent_id": str(SUPPORT_AGENT)}))[1] for _ in range(5)]
    assert len({b["room_name"] for b in bodies}) == 5
    assert len({b["session_id"] for b in bodies}) == 5


def _b64(segment: bytes) -> str:
    return base64.urlsafe_b64encode(segment).rstrip(b"=").decode()


def _edit_payload(token: str, edit: dict[str, Any]) -> str:
    """`token` with claims changed but its original signature kept: what a browser could try."""
    header, _, signature = token.split(".")
    payload = jwt.decode(token, options={"verify_signature": False})
    payload.update(edit)
    return ".".join([header, _b64(json.dumps(payload).encode()), signature])


@pytest.mark.parametrize("route", ["feather", "revdesk"])
async def test_editing_the_agent_id_breaks_the_grant(client: httpx.AsyncClient, route: str) -> None:
    token = (
        (await _feather_token(client, {"agent_id": str(SUPPORT_AGENT)}))[0]
        if route == "feather"
        else (await _revdesk_token(client))[0]
    )
    metadata = _dispatch(_verify(token)).metadata
    grant = json.loads(metadata)["grant"]
    other_agent = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02"
    forged = json.dumps({"grant": _edit_payload(grant, {"agent_id": other_agent})})
    with pytest.raises(DispatchRejected) as rejected:
        verify_dispatch_metadata(forged, secret=SIGNING_SECRET, issuer=ISSUER)
    assert rejected.value.reason == RejectReason.BAD_SIGNATURE

    # Editing the metadata inside the LiveKit token instead breaks the LiveKit signature.
    raw = jwt.decode(token, options={"verify_signature": False})
    raw["roomConfig"]["agents"][0]["metadata"] = forged
    with pytest.raises(jwt.InvalidSignatureError):
        _verify(_edit_payload(token, {"roomConfig": raw["roomConfig"]}))


async def test_no_secret_in_responses_logs_or_dispatch_metadata(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [
        await client.post("/v1/voice/web-call", json={"agent_id": str(SUPPORT_AGENT)}, headers=feather_headers()),
        await client.post("/v1/voice/web-call", json={"team_id": str(FRONT_DESK_TEAM)}, headers=feather_headers()),
        await client.post(
            "/v1/voice/web-call", json={"agent_id": str(SUPPORT_AGENT)}, headers={"x-api-key": KEY_ALL + "x"}
        ),
        await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="a")),
        await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="a")),
        await client.post(revdesk_path(SUPPORT_AGENT), headers={"Authorization": f"Bearer {KEY_ALL}y"}),
    ]
    tokens = [r.json()["access_token"] for r in responses[:2]] + [r.json()["data"]["token"] for r in responses[3:5]]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "web call minted" in logged  # the door does log its calls, just not their secrets
    for secret in (*ALL_SECRETS, *tokens):
        assert secret not in logged
    for response in responses:
        for secret in ALL_SECRETS:
            assert secret not in response.text
            assert all(secret not in value for value in response.headers.values())
    for token in tokens:
        metadata = _dispatch(_verify(token)).metadata
        claims = jwt.decode(json.loads(metadata)["grant"], options={"verify_signature": False})
        for secret in ALL_SECRETS:
            assert secret not in metadata and secret not in json.dumps(claims)


async def test_a_storage_failure_is_logged_without_its_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    creator = RecordingSessionCreator(fail_next=1)
    app = create_app(make_settings(tmp_path), session_creator=creator, clock=FakeClock())
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as c:
        response = await c.post("/v1/voice/web-call", json={"agent_id": str(SUPPORT_AGENT)}, headers=feather_headers())
    assert response.status_code == 503
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "ConnectionError" in logged
    assert "hunter2" not in logged and "hunter2" not in response.text
