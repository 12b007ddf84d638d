"""RevDesk's contract: `POST /v1/agents/{id}/web-call` with a bearer key, `Idempotency-Key`, and every
refusal (validation included, as 400) in the `{"error": {code, message, fields}}` envelope.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic.json_schema import SkipJsonSchema

from door.core import CallTarget
from door.dependencies import DoorContext, door_context, revdesk_caller
from door.errors import DoorError, IdempotencyKeyReused, TargetNotFound
from door.idempotency import IdempotencyConflict, StoredResponse, request_fingerprint
from door.keys import ApiKey
from door.refusals import envelope
from door.schemas import RETRY_AFTER_HEADER, ErrorEnvelope, RevDeskWebCallResponse

OPERATION_ID = "v1_agents_id_web_call_post"
PATH = "/v1/agents/{id}/web-call"
REPLAY_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_HEADER = "Idempotency-Key"

DESCRIPTION = """\
Mint a LiveKit join token for a browser test call with an agent. Hand `token` and `room_url` to the
browser client; LiveKit creates the room when it joins and dispatches the agent, named in a signed grant
inside the token. The session is recorded with `session_type="test"`.

`Idempotency-Key` (1 to `DOOR_IDEMPOTENCY_KEY_MAX_CHARS`, by default 255, characters; a UUID is
recommended): a repeat of the same request with the same key,
within the key's lifetime, returns the stored response with `Idempotent-Replayed: true` and starts no second
session; concurrent repeats wait for the first. The same key on a different request is a 409
(`idempotency_conflict`). Keys are scoped to the API key that used them; refusals are not stored.

Errors (`error.code`): 400 `validation_error`; 401 `unauthorized`; 403 `forbidden` (the key is not scoped
to this agent); 404 `not_found` (unknown agent, or an id that is not a UUID); 405 `method_not_allowed`;
408 `request_timeout` (the body did not arrive in time); 409 `disabled` or `idempotency_conflict`; 413
`payload_too_large` (body over `DOOR_MAX_BODY_BYTES`); 415 `unsupported_media_type` (a body that is not
JSON); 429 `rate_limited` with `Retry-After`; 500 `internal_error`; 503 `unavailable` (session not recorded).
"""


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("header", "Idempotency-Key") → "Idempotency-Key": the caller knows the parameter, not FastAPI's source.
    parts = [str(p) for p in loc[1:]] or [str(p) for p in loc]
    return ".".join(parts) or "request"


class RevDeskRoute(APIRoute):
    """Renders validation errors (as 400) and the door's refusals in the RevDesk error envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def render_refusals(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                fields: dict[str, str] = {}
                for error in exc.errors():
                    fields.setdefault(_field_name(error.get("loc", ())), str(error.get("msg", "invalid")))
                return envelope(400, "validation_error", "the request is not valid", fields=fields)
            except DoorError as exc:
                return envelope(exc.status_code, exc.code, exc.message, headers=exc.headers)

        return render_refusals


router = APIRouter(route_class=RevDeskRoute)

_ERROR = {"model": ErrorEnvelope}


@router.post(
    PATH,
    operation_id=OPERATION_ID,
    tags=["Agents"],
    summary="Start a browser call with an AI agent",
    description=DESCRIPTION,
    response_model=RevDeskWebCallResponse,
    responses={
        200: {
            "description": "Success",
            "headers": {
                REPLAY_HEADER: {
                    "description": "`true` when this is the stored response of an earlier request with the "
                    "same Idempotency-Key; `false` when the key was given and this request was served.",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                }
            },
        },
        400: {"description": "Validation error", **_ERROR},
        401: {"description": "Unauthorized", **_ERROR},
        403: {"description": "Forbidden", **_ERROR},
        404: {"description": "Not found", **_ERROR},
        405: {"description": "Method not allowed", **_ERROR},
        408: {"description": "The request body did not arrive in time", **_ERROR},
        409: {"description": "Conflict (incl. idempotency conflicts)", **_ERROR},
        413: {"description": "The request body is too large", **_ERROR},
        415: {"description": "A request body that is not JSON", **_ERROR},
        429: {"description": "Rate limited", "headers": RETRY_AFTER_HEADER, **_ERROR},
        500: {"description": "Unexpected failure", **_ERROR},
        503: {"description": "The session could not be recorded", **_ERROR},
    },
)
async def web_call(
    request: Request,
    id: str = Path(description="The agent's id (a UUID)."),
    # Its length is checked below against the configured limit (the app's OpenAPI states it), with a message
    # in characters: pydantic's own check on an optional header words it as "items".
    idempotency_key: str | SkipJsonSchema[None] = Header(
        None,
        alias="Idempotency-Key",
        description="When present, deduplicates repeat submissions (a UUID is recommended).",
    ),
    key: ApiKey = Depends(revdesk_caller),
    door: DoorContext = Depends(door_context),
) -> Response:
    # Read (and so bounded by door/limits.py) even though the contract ignores it: an oversized body is a 413
    # whether or not this request is idempotent, not a 200 that silently dropped it.
    body = await request.body()
    try:
        agent_id = uuid.UUID(id)
    except ValueError:
        raise TargetNotFound("agent not found: the id is not a UUID") from None

    async def serve() -> StoredResponse:
        minted = await door.service.start_call(key, CallTarget("agent", agent_id))
        data = {
            "token": minted.access_token,
            "room_url": minted.livekit_url,
            "room_name": minted.room_name,
            "expires_in": minted.expires_in,
            "agent_id": str(agent_id),
            "ice_servers": [],
        }
        return StoredResponse(200, {"data": data})

    if idempotency_key is not None and not 1 <= len(idempotency_key) <= door.idempotency_key_max_chars:
        most = door.idempotency_key_max_chars
        problem = f"is {len(idempotency_key)} characters long; it must be 1 to {most} characters"
        return envelope(400, "validation_error", "the request is not valid", fields={IDEMPOTENCY_HEADER: problem})

    if idempotency_key is None:
        response = await serve()
        return JSONResponse(response.body, status_code=response.status_code)

    # The canonical agent id, not the raw path: `/v1/agents/ABC…` and `/v1/agents/abc…` are one request.
    fingerprint = request_fingerprint("POST", f"/v1/agents/{agent_id}/web-call", body)
    try:
        response, replayed = await door.idempotency.run(key.name, idempotency_key, fingerprint, serve)
    except IdempotencyConflict:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used for a different request; use a new key"
        ) from None
    return JSONResponse(
        response.body,
        status_code=response.status_code,
        headers={REPLAY_HEADER: "true" if replayed else "false"},
    )
