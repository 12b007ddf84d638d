"""The door's one path from an authenticated request to a minted call, shared by both HTTP contracts.

Order of checks, and why:
1. scope — a key may only call the agents/teams it is scoped to (403). Checked before the catalog so that a
   key cannot probe which ids exist outside its scope.
2. catalog — an unknown id is 404; a disabled agent or team (or a team whose greeting member's agent is
   disabled) is 409: the resource exists but its state forbids calls, which is not the caller's permission.
3. context variables — seeds are coerced against the agent's active revision; team calls ignore them.
4. the token is minted, then the session row is created with the same session id; if storage fails the
   token is never handed out.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import anyio.to_thread

from catalog.context_vars import coerce_seeds
from catalog.loader import CatalogStore
from door.errors import ScopeDenied, SessionStoreUnavailable, TargetDisabled, TargetNotFound
from door.keys import ApiKey
from door.sessions import SessionCreator, create_session
from worker.dispatch import SessionType
from worker.settings import Settings
from worker.tokens import MintedCall, mint_call

log = logging.getLogger("voice_worker.door")

WEB_CALL_SESSION_TYPE: SessionType = "test"

TargetKind = Literal["agent", "team"]


@dataclass(frozen=True)
class CallTarget:
    kind: TargetKind
    id: uuid.UUID


class WebCallService:
    def __init__(self, settings: Settings, catalog_store: CatalogStore, session_creator: SessionCreator) -> None:
        self._settings = settings
        self._catalog_store = catalog_store
        self._session_creator = session_creator

    async def start_call(
        self,
        key: ApiKey,
        target: CallTarget,
        context_variables: dict[str, Any] | None = None,
        *,
        session_type: SessionType = WEB_CALL_SESSION_TYPE,
    ) -> MintedCall:
        """A minted call for `target`, its session recorded. Raises `door.errors.DoorError` or `ContextVarErrors`."""
        allowed = key.scopes.allows_agent(target.id) if target.kind == "agent" else key.scopes.allows_team(target.id)
        if not allowed:
            raise ScopeDenied(f"this API key may not call {target.kind} {target.id}")

        # A stat walk of the catalog directory at most every few seconds; keep it off the event loop.
        catalog = await anyio.to_thread.run_sync(self._catalog_store.get)
        seeds: dict[str, Any] = {}
        if target.kind == "agent":
            agent = catalog.agents.get(target.id)
            if agent is None:
                raise TargetNotFound(f"agent {target.id} not found")
            if not agent.enabled:
                raise TargetDisabled(f"agent {target.id} is disabled")
            if context_variables:
                seeds = coerce_seeds(agent.active_revision.context_variables, context_variables)
        else:
            team = catalog.teams.get(target.id)
            if team is None:
                raise TargetNotFound(f"team {target.id} not found")
            if not team.enabled:
                raise TargetDisabled(f"team {target.id} is disabled")
            greeter = catalog.agents.get(team.initial_member.assistant_id)
            if greeter is None or not greeter.enabled:
                raise TargetDisabled(f"team {target.id} cannot answer: its initial member's agent is disabled")
            # Team test calls ignore seeds (platform contract: single-agent bindings only).

        agent_id = target.id if target.kind == "agent" else None
        team_id = target.id if target.kind == "team" else None
        minted = mint_call(
            self._settings,
            session_type=session_type,
            agent_id=agent_id,
            team_id=team_id,
            context_variables=seeds or None,
        )
        try:
            await create_session(
                self._session_creator,
                session_id=minted.session_id,
                session_type=session_type,
                agent_id=agent_id,
                team_id=team_id,
                context_variables=seeds or None,
            )
        except Exception as exc:
            # Only the type: storage errors can carry connection strings.
            log.error(
                "web call refused: session %s could not be recorded (%s)", minted.session_id, type(exc).__name__
            )
            raise SessionStoreUnavailable("the call could not be recorded; try again shortly") from None
        log.info(
            "web call minted: key=%s %s=%s session=%s room=%s",
            key.name,
            target.kind,
            target.id,
            minted.session_id,
            minted.room_name,
        )
        return minted
