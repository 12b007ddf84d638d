"""The dispatch-metadata contract between the web-call door and the worker. One module owns it.

Path of a dispatch, from token to agent:

1. The door (or `voice-worker web-call`) calls `mint_dispatch_metadata()`: the claims below become a compact
   HS256 JWT signed with `DISPATCH_SIGNING_SECRET` (never the LiveKit API secret), wrapped as
   `{"grant": "<jwt>"}`.
2. That JSON string is the `metadata` of the `RoomAgentDispatch` in the browser's LiveKit access token.
   The browser can read it (a JWT is signed, not encrypted): no secret ever goes into the claims.
3. When the browser joins, LiveKit offers the job to a worker registered under our agent name; the job's
   `metadata` is that string. The worker's request handler calls `verify_dispatch_metadata()` before any
   job process is spent, and the entrypoint calls it again (cheap) to obtain the typed claims.

A tampered claim breaks the signature; a grant signed with another secret is `bad_signature`; a grant lives
at most `MAX_GRANT_LIFETIME` so a leaked token cannot start calls for long.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.session_type import SessionType

GRANT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({GRANT_VERSION})
MAX_GRANT_LIFETIME = timedelta(minutes=15)
DEFAULT_GRANT_LIFETIME = timedelta(minutes=5)
# Clock skew tolerated between the door's and the worker's clocks.
CLOCK_LEEWAY_S = 10
_ALGORITHM = "HS256"


class RejectReason(StrEnum):
    MALFORMED_METADATA = "malformed_metadata"
    MISSING_GRANT = "missing_grant"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    WRONG_ISSUER = "wrong_issuer"
    UNKNOWN_VERSION = "unknown_version"
    BOTH_AGENT_AND_TEAM = "both_agent_and_team"
    NEITHER_AGENT_NOR_TEAM = "neither_agent_nor_team"
    INVALID_CLAIMS = "invalid_claims"


class DispatchRejected(Exception):
    """A dispatch that must not be served. `reason` is stable (metrics, logs); `detail` is for operators."""

    def __init__(self, reason: RejectReason | str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = str(reason)
        self.detail = detail


class DispatchClaims(BaseModel):
    """What a verified grant says. Field names are the JWT claim names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ver: int
    iss: str
    iat: int
    exp: int
    session_id: uuid.UUID
    session_type: SessionType
    agent_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    context_variables: dict[str, Any] = Field(default_factory=dict)
    # The platform's end-user id when the caller is known (live calls); keys memory. Not a secret.
    end_user_id: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _exactly_one_target(self) -> DispatchClaims:
        if self.agent_id is not None and self.team_id is not None:
            raise DispatchRejected(RejectReason.BOTH_AGENT_AND_TEAM, "grant names both agent_id and team_id")
        if self.agent_id is None and self.team_id is None:
            raise DispatchRejected(RejectReason.NEITHER_AGENT_NOR_TEAM, "grant names neither agent_id nor team_id")
        return self

    @property
    def target_kind(self) -> Literal["agent", "team"]:
        return "agent" if self.agent_id is not None else "team"

    @property
    def target_id(self) -> uuid.UUID:
        target = self.agent_id or self.team_id
        assert target is not None  # guaranteed by the validator
        return target


@dataclass(frozen=True)
class DispatchRequest:
    """What the minting side asks for; validated by `DispatchClaims` on the way out as on the way in."""

    session_id: uuid.UUID
    session_type: SessionType
    agent_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    context_variables: dict[str, Any] | None = None
    end_user_id: str | None = None


def mint_dispatch_metadata(
    request: DispatchRequest,
    *,
    secret: str,
    issuer: str,
    lifetime: timedelta = DEFAULT_GRANT_LIFETIME,
    now: float | None = None,
) -> str:
    """The job-metadata string for a `RoomAgentDispatch`."""
    if lifetime > MAX_GRANT_LIFETIME or lifetime.total_seconds() <= 0:
        raise ValueError(f"grant lifetime {lifetime} must be positive and at most {MAX_GRANT_LIFETIME}")
    issued = int(time.time() if now is None else now)
    claims = DispatchClaims(
        ver=GRANT_VERSION,
        iss=issuer,
        iat=issued,
        exp=issued + int(lifetime.total_seconds()),
        session_id=request.session_id,
        session_type=request.session_type,
        agent_id=request.agent_id,
        team_id=request.team_id,
        context_variables=dict(request.context_variables or {}),
        end_user_id=request.end_user_id,
    )
    payload = claims.model_dump(mode="json", exclude_none=True)
    token = jwt.encode(payload, secret, algorithm=_ALGORITHM)
    return json.dumps({"grant": token}, separators=(",", ":"))


def verify_dispatch_metadata(
    metadata: str | None,
    *,
    secret: str,
    issuer: str,
    now: float | None = None,
) -> DispatchClaims:
    """Typed claims of a valid grant, or `DispatchRejected` naming why not."""
    if not metadata:
        raise DispatchRejected(RejectReason.MISSING_GRANT, "job metadata is empty")
    try:
        envelope = json.loads(metadata)
    except json.JSONDecodeError as exc:
        raise DispatchRejected(RejectReason.MALFORMED_METADATA, f"job metadata is not JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:  # has no `msg`: naming it must not raise AttributeError instead
        raise DispatchRejected(RejectReason.MALFORMED_METADATA, f"job metadata is not JSON ({exc.reason})") from None
    if not isinstance(envelope, dict):
        raise DispatchRejected(RejectReason.MALFORMED_METADATA, "job metadata is not a JSON object")
    token = envelope.get("grant")
    if not isinstance(token, str) or not token:
        raise DispatchRejected(RejectReason.MISSING_GRANT, 'job metadata has no "grant" string')

    current = time.time() if now is None else now
    try:
        # exp/iat are checked below against `current` so that tests and operators can pass a clock.
        payload = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            options={"verify_exp": False, "verify_iat": False, "verify_iss": False, "require": ["exp", "iat"]},
        )
    except jwt.InvalidSignatureError:
        raise DispatchRejected(RejectReason.BAD_SIGNATURE, "grant signature does not match") from None
    except jwt.MissingRequiredClaimError as exc:
        raise DispatchRejected(RejectReason.INVALID_CLAIMS, f"grant lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise DispatchRejected(RejectReason.MALFORMED_METADATA, f"grant is not a valid JWT ({exc})") from None

    version = payload.get("ver")
    if version not in SUPPORTED_VERSIONS:
        raise DispatchRejected(
            RejectReason.UNKNOWN_VERSION,
            f"grant version {version!r} is not one of {sorted(SUPPORTED_VERSIONS)}",
        )
    if payload.get("iss") != issuer:
        raise DispatchRejected(RejectReason.WRONG_ISSUER, f"grant issuer {payload.get('iss')!r} is not {issuer!r}")
    iat, exp = payload.get("iat"), payload.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int):
        raise DispatchRejected(RejectReason.INVALID_CLAIMS, "iat and exp must be integer timestamps")
    if iat > current + CLOCK_LEEWAY_S:
        raise DispatchRejected(RejectReason.NOT_YET_VALID, f"grant issued {iat - current:.0f}s in the future")
    if exp <= current - CLOCK_LEEWAY_S:
        raise DispatchRejected(RejectReason.EXPIRED, f"grant expired {current - exp:.0f}s ago")
    if exp - iat > MAX_GRANT_LIFETIME.total_seconds():
        raise DispatchRejected(
            RejectReason.LIFETIME_TOO_LONG,
            f"grant lives {exp - iat}s, more than {int(MAX_GRANT_LIFETIME.total_seconds())}s",
        )
    try:
        return DispatchClaims.model_validate(payload)
    except DispatchRejected:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "grant"
        # pydantic wraps exceptions raised in validators; unwrap ours to keep the precise reason.
        ctx_error = first.get("ctx", {}).get("error")
        if isinstance(ctx_error, DispatchRejected):
            raise ctx_error from None
        raise DispatchRejected(RejectReason.INVALID_CLAIMS, f"{field}: {first['msg']}") from None
