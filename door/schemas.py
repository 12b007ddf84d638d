"""Request and response bodies of both web-call contracts, shaped so /openapi.json matches the seeds.

Feather (`/v1/voice/web-call`): `WebCallRequest` / `WebCallResponse`, FastAPI's `HTTPValidationError` for
422 and `HTTPError` (`{"detail": "..."}`) for the other refusals. RevDesk (`/v1/agents/{id}/web-call`):
`RevDeskWebCallResponse` (`{"data": {...}}`, no extra properties) and `ErrorEnvelope` for every refusal.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import AnyUrl, BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

# The RevDesk contract's agent_id pattern: an RFC 4122 version 1-8 UUID, or the nil or max UUID.
REVDESK_UUID_PATTERN = (
    r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
    r"|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$"
)

# OpenAPI header object for 429 responses on both routes.
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds until the key may call again.",
        "required": True,
        "schema": {"type": "integer"},
    }
}


class WebCallRequest(BaseModel):
    """A browser test call: exactly one of an agent or a team, plus optional typed seeds for an agent.

    The door signs the target into the token's dispatch metadata, so the browser cannot switch agents.
    """

    agent_id: uuid.UUID | None = Field(
        None,
        title="Agent Id",
        description="The agent to call; its active revision drives the call. Give this or `team_id`, not both.",
    )
    team_id: uuid.UUID | None = Field(
        None,
        title="Team Id",
        description="The team to call; its initial member greets. Give this or `agent_id`, not both.",
    )
    context_variables: dict[str, Any] | None = Field(
        None,
        title="Context Variables",
        description=(
            "Seeds for the agent's declared context variables, coerced to their declared types. An undeclared "
            "name or a value that cannot be coerced is a 422 at `body.context_variables.<name>`. "
            "Ignored for team calls."
        ),
    )

    @model_validator(mode="after")
    def _agent_xor_team(self) -> WebCallRequest:
        if (self.agent_id is None) == (self.team_id is None):
            raise PydanticCustomError("agent_xor_team", "Provide exactly one of agent_id or team_id")
        return self


class WebCallResponse(BaseModel):
    livekit_url: str = Field(title="Livekit Url", description="The ws(s):// URL for livekit-client's connect().")
    access_token: str = Field(
        title="Access Token",
        description="LiveKit join token valid for 5 minutes; its room configuration dispatches the voice agent.",
    )
    room_name: str = Field(title="Room Name")
    session_id: uuid.UUID = Field(title="Session Id")


class HTTPError(BaseModel):
    """A refusal other than a validation error (401, 403, 404, 409, 429, 503)."""

    detail: str


class RevDeskWebCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(description="LiveKit join token (5 minutes); its room configuration dispatches the agent.")
    room_url: str = Field(description="The ws(s):// LiveKit URL to connect to.")
    room_name: str
    expires_in: float = Field(description="Seconds until `token` expires.")
    agent_id: Annotated[str, Field(json_schema_extra={"format": "uuid"}, pattern=REVDESK_UUID_PATTERN)]
    ice_servers: list[Any] = Field(
        description="Extra ICE servers; empty because LiveKit hands out its own during signalling."
    )


class RevDeskWebCallResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: RevDeskWebCall


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. `not_found`, `idempotency_conflict`.")
    message: str
    fields: dict[str, str] | SkipJsonSchema[None] = Field(
        None, description="For validation errors: the offending parameter and what is wrong with it."
    )
    doc_url: AnyUrl | SkipJsonSchema[None] = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
