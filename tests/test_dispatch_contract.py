"""The dispatch-metadata contract: every way a grant can be wrong has its own reason."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import jwt
import pytest

from contract.dispatch import (
    MAX_GRANT_LIFETIME,
    DispatchClaims,
    DispatchRejected,
    DispatchRequest,
    RejectReason,
    mint_dispatch_metadata,
    verify_dispatch_metadata,
)

SECRET = "s" * 40
ISSUER = "door-under-test"
AGENT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")


def mint(**overrides) -> str:
    request = DispatchRequest(
        session_id=overrides.pop("session_id", uuid.uuid4()),
        session_type=overrides.pop("session_type", "test"),
        agent_id=overrides.pop("agent_id", AGENT),
        team_id=overrides.pop("team_id", None),
        context_variables=overrides.pop("context_variables", {"customer_name": "Dana"}),
    )
    return mint_dispatch_metadata(request, secret=SECRET, issuer=ISSUER, **overrides)


def verify(metadata: str, **kw) -> DispatchClaims:
    return verify_dispatch_metadata(metadata, secret=kw.pop("secret", SECRET), issuer=kw.pop("issuer", ISSUER), **kw)


def raw_grant(payload: dict, secret: str = SECRET) -> str:
    return json.dumps({"grant": jwt.encode(payload, secret, algorithm="HS256")})


def reason_of(metadata: str | None, **kw) -> str:
    with pytest.raises(DispatchRejected) as info:
        verify(metadata, **kw)  # type: ignore[arg-type]  # None too: a job without metadata
    return info.value.reason


def test_round_trip_gives_typed_claims():
    session = uuid.uuid4()
    claims = verify(mint(session_id=session, session_type="live"))
    assert claims.session_id == session
    assert claims.session_type == "live"
    assert claims.agent_id == AGENT and claims.team_id is None
    assert claims.target_kind == "agent" and claims.target_id == AGENT
    assert claims.context_variables == {"customer_name": "Dana"}
    assert claims.iss == ISSUER and claims.exp - claims.iat == 300


def test_metadata_holds_no_secret():
    metadata = mint()
    assert SECRET not in metadata
    # Readable by anyone holding the token: only the claims are in there.
    payload = jwt.decode(json.loads(metadata)["grant"], options={"verify_signature": False})
    assert set(payload) == {"ver", "iss", "iat", "exp", "session_id", "session_type", "agent_id", "context_variables"}


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ("", RejectReason.MISSING_GRANT),
        (None, RejectReason.MISSING_GRANT),
        ("not json {", RejectReason.MALFORMED_METADATA),
        ("[1, 2]", RejectReason.MALFORMED_METADATA),
        ('{"other": 1}', RejectReason.MISSING_GRANT),
        ('{"grant": "abc.def"}', RejectReason.MALFORMED_METADATA),
    ],
)
def test_malformed_envelopes(metadata, reason):
    assert reason_of(metadata) == reason


def test_forged_signature():
    assert reason_of(mint(), secret="another-secret-entirely-xxxxxxxxxxxxxxx") == RejectReason.BAD_SIGNATURE


def test_tampered_payload_breaks_the_signature():
    token = json.loads(mint())["grant"]
    header, _payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["agent_id"] = str(uuid.uuid4())
    forged_payload = jwt.encode(claims, "whatever", algorithm="HS256").split(".")[1]
    tampered = json.dumps({"grant": f"{header}.{forged_payload}.{signature}"})
    assert reason_of(tampered) == RejectReason.BAD_SIGNATURE


def test_alg_none_is_refused():
    unsigned = jwt.encode({"ver": 1}, None, algorithm="none")
    assert reason_of(json.dumps({"grant": unsigned})) == RejectReason.MALFORMED_METADATA


def test_expired_and_not_yet_valid():
    issued = time.time() - 3600
    assert reason_of(mint(now=issued)) == RejectReason.EXPIRED
    assert reason_of(mint(now=time.time() + 3600)) == RejectReason.NOT_YET_VALID
    # Inside the clock-skew leeway a grant is still good.
    assert verify(mint(now=time.time() + 5)).ver == 1


def test_lifetime_is_capped_on_both_sides():
    with pytest.raises(ValueError):
        mint(lifetime=MAX_GRANT_LIFETIME + timedelta(seconds=1))
    now = int(time.time())
    payload = {
        "ver": 1,
        "iss": ISSUER,
        "iat": now,
        "exp": now + 3600,
        "session_id": str(uuid.uuid4()),
        "session_type": "test",
        "agent_id": str(AGENT),
        "context_variables": {},
    }
    assert reason_of(raw_grant(payload)) == RejectReason.LIFETIME_TOO_LONG


def _payload(**changes):
    now = int(time.time())
    payload = {
        "ver": 1,
        "iss": ISSUER,
        "iat": now,
        "exp": now + 300,
        "session_id": str(uuid.uuid4()),
        "session_type": "test",
        "agent_id": str(AGENT),
        "context_variables": {},
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ver": 2}, RejectReason.UNKNOWN_VERSION),
        ({"ver": None}, RejectReason.UNKNOWN_VERSION),
        ({"iss": "somebody-else"}, RejectReason.WRONG_ISSUER),
        ({"team_id": str(uuid.uuid4())}, RejectReason.BOTH_AGENT_AND_TEAM),
        ({"agent_id": None}, RejectReason.NEITHER_AGENT_NOR_TEAM),
        ({"session_type": "production"}, RejectReason.INVALID_CLAIMS),
        ({"session_id": "not-a-uuid"}, RejectReason.INVALID_CLAIMS),
        ({"agent_id": "not-a-uuid"}, RejectReason.INVALID_CLAIMS),
        ({"context_variables": ["a"]}, RejectReason.INVALID_CLAIMS),
        ({"surprise": 1}, RejectReason.INVALID_CLAIMS),
        ({"exp": None}, RejectReason.INVALID_CLAIMS),
    ],
)
def test_claim_level_rejections(changes, reason):
    assert reason_of(raw_grant(_payload(**changes))) == reason


def test_rejection_detail_names_the_field():
    with pytest.raises(DispatchRejected) as info:
        verify(raw_grant(_payload(session_type="production")))
    assert "session_type" in info.value.detail
