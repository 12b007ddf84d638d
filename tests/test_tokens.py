"""A minted browser token: verifiable, 5 minutes, dispatching our agent with a grant the worker accepts."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from livekit import api

from contract.dispatch import DispatchRejected, RejectReason, verify_dispatch_metadata
from contract.tokens import TOKEN_TTL, mint_call
from worker.settings import Settings

AGENT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, VOICE_WORKER_MODE="dev", AGENT_NAME="voice-worker-test")


def test_token_verifies_and_dispatches_our_agent(settings):
    minted = mint_call(settings, session_type="test", agent_id=AGENT, context_variables={"customer_name": "Dana"})
    key, secret = settings.livekit_credentials()
    claims = api.TokenVerifier(key, secret).verify(minted.access_token)
    assert claims.video.room_join and claims.video.room == minted.room_name
    assert claims.identity == minted.participant_identity
    raw = jwt.decode(minted.access_token, options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == int(TOKEN_TTL.total_seconds()) == 300
    dispatches = claims.room_config.agents
    assert [d.agent_name for d in dispatches] == ["voice-worker-test"]
    grant = verify_dispatch_metadata(
        dispatches[0].metadata, secret=settings.signing_secret(), issuer=settings.dispatch_issuer
    )
    assert grant.agent_id == AGENT and grant.session_id == minted.session_id
    assert grant.session_type == "test" and grant.context_variables == {"customer_name": "Dana"}
    assert settings.signing_secret() not in minted.access_token


def test_rooms_are_fresh_and_unguessable(settings):
    names = {mint_call(settings, session_type="test", agent_id=AGENT).room_name for _ in range(50)}
    assert len(names) == 50
    assert all(len(n) >= len("call-") + 20 for n in names)


def test_editing_the_dispatch_metadata_cannot_change_the_agent(settings):
    minted = mint_call(settings, session_type="test", agent_id=AGENT)
    key, secret = settings.livekit_credentials()
    metadata = api.TokenVerifier(key, secret).verify(minted.access_token).room_config.agents[0].metadata
    token = json.loads(metadata)["grant"]
    header, _, signature = token.split(".")
    payload = jwt.decode(token, options={"verify_signature": False})
    payload["agent_id"] = str(uuid.uuid4())
    forged = jwt.encode(payload, "guess", algorithm="HS256").split(".")[1]
    with pytest.raises(DispatchRejected) as info:
        verify_dispatch_metadata(
            json.dumps({"grant": f"{header}.{forged}.{signature}"}),
            secret=settings.signing_secret(),
            issuer=settings.dispatch_issuer,
        )
    assert info.value.reason == RejectReason.BAD_SIGNATURE
    # And the grant outlives the join token only slightly.
    assert payload["exp"] - time.time() < 7 * 60
