"""Feather's contract: `POST /v1/voice/web-call` with `x-api-key`, FastAPI-style errors.

Validation errors keep FastAPI's 422 `{"detail": [{loc, msg, type}]}` shape, including context-variable
seeds (`loc: ["body", "context_variables", "<name>"]`). Every other refusal is `{"detail": "<message>"}`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from catalog.context_vars import ContextVarErrors
from door.core import CallTarget
from door.dependencies import DoorContext, door_context, feather_caller
from door.errors import DoorError, SeedsRefused
from door.keys import ApiKey
from door.schemas import RETRY_AFTER_HEADER, HTTPError, WebCallRequest, WebCallResponse

OPERATION_ID = "web_call_v1_voice_web_call_post"
PATH = "/v1/voice/web-call"

DESCRIPTION = """\
Mint a LiveKit join token for a browser test call against an agent or a team.

Pass `livekit_url` and `access_token` to livekit-client's `connect()`. LiveKit creates the room when the
browser joins and dispatches the voice worker into it; the target and the coerced seeds travel in a signed
grant inside the token, so the browser cannot change which agent it talks to. The session is recorded with
`session_type="test"` (no post-call processing).

Errors: 401 missing or unknown key; 403 the key is not scoped to this agent or team; 404 unknown agent or
team; 409 the agent or team exists but is disabled (or a team's greeting agent is); 422 invalid body,
both or neither of `agent_id`/`team_id`, or a context variable that is undeclared, system-set or not
coercible or out of its bounds, more than `DOOR_MAX_CONTEXT_VARS` variables, or seeds that would make the token
larger than `DOOR_MAX_TOKEN_BYTES`; 400 a body that is JSON but cannot be parsed; 408 the body did not arrive
within `DOOR_BODY_TIMEOUT_S`; 413 a body over `DOOR_MAX_BODY_BYTES`; 429 the key's rate limit, with
`Retry-After`; 500 an unexpected failure; 503 the session could not be recorded.
"""


class FeatherRoute(APIRoute):
    """Renders the door's refusals as `{"detail": message}`; validation errors go to FastAPI's handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def render_refusals(request: Request) -> Response:
            try:
                return await handler(request)
            except DoorError as exc:
                return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=exc.headers)

        return render_refusals


router = APIRouter(route_class=FeatherRoute)


def _refusal(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "model": HTTPError, **extra}


@router.post(
    PATH,
    operation_id=OPERATION_ID,
    tags=["voice"],
    summary="Web Call",
    description=DESCRIPTION,
    response_model=WebCallResponse,
    responses={
        400: _refusal("The body could not be parsed"),
        401: _refusal("Missing or unknown API key"),
        403: _refusal("The API key is not scoped to this agent or team"),
        404: _refusal("Unknown agent or team"),
        408: _refusal("The request body did not arrive in time"),
        409: _refusal("The agent or team is disabled"),
        413: _refusal("The request body is too large"),
        429: _refusal("Rate limited", headers=RETRY_AFTER_HEADER),
        500: _refusal("Unexpected failure"),
        503: _refusal("The session could not be recorded"),
    },
)
async def web_call(
    body: WebCallRequest,
    key: ApiKey = Depends(feather_caller),
    door: DoorContext = Depends(door_context),
) -> dict[str, str]:
    if body.agent_id is not None:
        target = CallTarget("agent", body.agent_id)
    else:
        assert body.team_id is not None  # the request model enforces agent XOR team
        target = CallTarget("team", body.team_id)
    try:
        minted = await door.service.start_call(key, target, body.context_variables)
    except ContextVarErrors as exc:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "context_variables", error.name),
                    "msg": error.reason,
                    "type": f"context_variable_{error.kind}",
                }
                for error in exc.errors
            ]
        ) from None
    except SeedsRefused as exc:
        raise RequestValidationError(
            [{"loc": ("body", "context_variables"), "msg": exc.message, "type": "context_variables_too_large"}]
        ) from None
    return minted.as_web_call_response()
