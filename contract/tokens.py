"""Minting the browser's LiveKit access token for a call: the one core behind the door and `voice-worker web-call`.

The token lets one browser participant join one fresh room; its room configuration carries a
`RoomAgentDispatch` naming our agent, whose metadata is the signed dispatch grant (contract/dispatch.py).
The room is not created here: LiveKit creates it when the browser connects, and only then honours the
token's agent dispatch (a dispatch in a token is ignored for a room that already exists).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from livekit import api

from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.session_type import SessionType
from contract.settings import SharedSettings

TOKEN_TTL = timedelta(minutes=5)


@dataclass(frozen=True)
class MintedCall:
    livekit_url: str
    access_token: str
    room_name: str
    session_id: uuid.UUID
    expires_in: int
    participant_identity: str

    def as_web_call_response(self) -> dict[str, str]:
        """The platform's `WebCallResponse` shape."""
        return {
            "livekit_url": self.livekit_url,
            "access_token": self.access_token,
            "room_name": self.room_name,
            "session_id": str(self.session_id),
        }


def new_room_name() -> str:
    # 128 bits from the OS CSPRNG: a room name nobody can guess to join someone else's call.
    return f"call-{secrets.token_urlsafe(16)}"


def mint_call(
    settings: SharedSettings,
    *,
    session_type: SessionType,
    agent_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    context_variables: dict[str, Any] | None = None,
    session_id: uuid.UUID | None = None,
    room_name: str | None = None,
    public_livekit_url: str | None = None,
) -> MintedCall:
    """A browser join token whose room dispatches our agent with a signed grant for this session.

    `public_livekit_url` is the URL the browser is told, when it differs from the one this process uses."""
    session = session_id or uuid.uuid4()
    room = room_name or new_room_name()
    identity = f"web-{session.hex[:12]}"
    metadata = mint_dispatch_metadata(
        DispatchRequest(
            session_id=session,
            session_type=session_type,
            agent_id=agent_id,
            team_id=team_id,
            context_variables=context_variables,
        ),
        secret=settings.signing_secret(),
        issuer=settings.dispatch_issuer,
        # The grant must outlive the join token a little: the browser may connect at the token's last second.
        lifetime=TOKEN_TTL + timedelta(minutes=1),
    )
    key, secret = settings.livekit_credentials()
    token = (
        api.AccessToken(key, secret)
        .with_identity(identity)
        .with_name("Web caller")
        .with_ttl(TOKEN_TTL)
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True))
        .with_room_config(
            api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=settings.agent_name, metadata=metadata)])
        )
        .to_jwt()
    )
    return MintedCall(
        livekit_url=public_livekit_url or settings.livekit_url,
        access_token=token,
        room_name=room,
        session_id=session,
        expires_in=int(TOKEN_TTL.total_seconds()),
        participant_identity=identity,
    )
