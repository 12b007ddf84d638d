"""The door's one path from an authenticated request to a minted call, shared by both HTTP contracts.

Order of checks, and why:
1. scope — a key may only call the agents/teams it is scoped to (403). Checked before the catalog so that a
   key cannot probe which ids exist outside its scope.
2. catalog — an unknown id is 404; a disabled agent or team (or a team whose greeting member's agent is
   disabled) is 409: the resource exists but its state forbids calls, which is not the caller's permission.
3. context variables — at most DOOR_MAX_CONTEXT_VARS, coerced against the agent's active revision within their
   bounds (catalog/context_vars.py); team calls ignore them.
4. the token is minted and must fit DOOR_MAX_TOKEN_BYTES (it reaches LiveKit in a URL), then the session row is
   created with the same session id; if storage fails the token is never handed out.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import anyio.to_thread

from catalog.context_vars import ValueLimits, coerce_seeds
from catalog.loader import Catalog, CatalogStore
from contract.session_type import SessionType
from contract.tokens import MintedCall, mint_call
from door.errors import ScopeDenied, SeedsRefused, SessionStoreUnavailable, TargetDisabled, TargetNotFound
from door.keys import ApiKey
from door.sessions import SessionCreator, create_session
from door.settings import DoorSettings

log = logging.getLogger("voice_worker.door")

WEB_CALL_SESSION_TYPE = SessionType.TEST
CATALOG_RECHECK_S = 1.0

TargetKind = Literal["agent", "team"]


@dataclass(frozen=True)
class CallTarget:
    kind: TargetKind
    id: uuid.UUID


class WebCallService:
    def __init__(self, settings: DoorSettings, catalog_store: CatalogStore, session_creator: SessionCreator) -> None:
        self._settings = settings
        self._catalog_store = catalog_store
        self._session_creator = session_creator
        self._catalog_cache: tuple[float, Catalog] | None = None
        self._limits = ValueLimits(
            settings.context_var_max_string_chars, settings.context_var_max_abs_int, settings.context_var_max_abs_float
        )

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

        catalog = await self._catalog()
        seeds: dict[str, Any] = {}
        if target.kind == "agent":
            agent = catalog.agents.get(target.id)
            if agent is None:
                raise TargetNotFound(f"agent {target.id} not found")
            if not agent.enabled:
                raise TargetDisabled(f"agent {target.id} is disabled")
            if context_variables:
                if len(context_variables) > self._settings.door_max_context_vars:
                    raise SeedsRefused(
                        f"{len(context_variables)} context variables given; at most "
                        f"{self._settings.door_max_context_vars} are allowed"
                    )
                seeds = coerce_seeds(agent.active_revision.context_variables, context_variables, self._limits)
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
            public_livekit_url=self._settings.door_public_livekit_url,
        )
        token_bytes = len(minted.access_token)
        if token_bytes > self._settings.door_max_token_bytes:
            raise SeedsRefused(
                f"the context variables make the call token {token_bytes} bytes long; at most "
                f"{self._settings.door_max_token_bytes} bytes fit (shorten the values)"
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
                "web call refused: session %s could not be recorded (%s)",
                minted.session_id,
                type(exc).__name__,
                extra=self._call_fields(minted, agent_id),
            )
            raise SessionStoreUnavailable("the call could not be recorded; try again shortly") from None
        log.info(
            "web call minted: key=%s %s=%s session=%s room=%s",
            key.name,
            target.kind,
            target.id,
            minted.session_id,
            minted.room_name,
            extra={**self._call_fields(minted, agent_id), "team_id": str(team_id) if team_id else None},
        )
        return minted

    async def _catalog(self) -> Catalog:
        # The store stat-walks the catalog directory every few seconds, so it must not run on the event loop;
        # but a thread hop per request is most of a request's latency under load (the GIL hand-off waits for the
        # switch interval). So: the catalog of the last check, asking the store again once a second.
        now = time.monotonic()
        if self._catalog_cache is None or now - self._catalog_cache[0] >= CATALOG_RECHECK_S:
            catalog = await anyio.to_thread.run_sync(self._catalog_store.get)
            self._catalog_cache = (now, catalog)
        return self._catalog_cache[1]

    @staticmethod
    def _call_fields(minted: MintedCall, agent_id: uuid.UUID | None) -> dict[str, str | None]:
        # The same field names as the worker's call lines (telemetry/logcontext.py), so one query finds both.
        return {"session_id": str(minted.session_id), "agent_id": str(agent_id) if agent_id else None}
