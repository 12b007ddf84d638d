"""A team call: one `CallAgent` per member, and the moves of the caller between members.

Each member speaks as its catalog agent's active revision (its own system prompt, procedures and context
variables; variables start from the revision's defaults, never from seeds: team calls ignore seeds, as the
platform's contract says). Every member with somewhere to go carries `transfer_to_member` (an enum of the
other available members' router names, plus a reason); the tool returns the target member's agent with the
conversation so far, and that agent answers as soon as it takes over. A target that is missing, disabled,
or whose catalog agent is missing or disabled sends the caller to the team's fallback member instead.

Team mode `supervisor` adds the team router (procedures/router.py over the members' router names,
descriptions and examples) on the first turn of the call only: it runs alongside the initial member's
procedure choice, and if it names another member the initial member calls its own transfer tool (see
procedures/supervisor.py), so the move costs no more than a handoff the member made itself. Later moves
are the members' own decisions through the same tool: a router on every turn would double the model calls
of every turn to second-guess a member that already has the conversation in front of it. Mode `swarm`
has no team router.

Every member change is recorded in the call's `Supervision` (from, to, reason, at).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

from livekit.agents import Agent, llm
from livekit.agents.llm import RawFunctionTool, function_tool
from livekit.agents.voice.events import RunContext

from catalog.models import Agent as CatalogAgent
from catalog.models import Team, TeamMember
from catalog.pipeline_config import ModelChainEntry
from catalog.variables import CallVariables
from pipelines.framing import AgentFraming
from procedures.agent import CallAgent
from procedures.router import ConstrainedRouter, RouteOption
from procedures.supervisor import (
    DEFAULT_MAX_SPECULATION,
    TEAM_ROUTER_REASON,
    TRANSFER_TOOL,
    Supervision,
    Supervisor,
    TeamRoute,
)
from records.outcome import MemberChange
from tools.function_tools import CallTools

log = logging.getLogger("voice_worker.team")

RouterModels = Callable[[ModelChainEntry | None], llm.LLM[Any] | None]
"""The router model for a `router_model_settings` entry (None: the call's own LLM)."""

MAX_REASON_CHARS = 200

# `transfer_to_member(raw_arguments, context) -> Agent | str` as a raw-schema tool (see `TeamCall._transfer_tool`).
TransferTool: TypeAlias = RawFunctionTool[[dict[str, object], RunContext[None]], Coroutine[Any, Any, Agent | str]]


class TeamCall:
    """The members of one team call. `initial_agent()` is the agent the session starts with."""

    def __init__(
        self,
        *,
        team: Team,
        agents: Mapping[uuid.UUID, CatalogAgent],
        system_values: Mapping[str, Any],
        on_end: Callable[[str], None],
        router_models: RouterModels,
        supervision: Supervision,
        initial_variables: CallVariables | None = None,
        max_speculation: int = DEFAULT_MAX_SPECULATION,
        platform_tools: CallTools | None = None,
        framing: AgentFraming | None = None,
    ) -> None:
        self.team = team
        # the team's pipeline frames every member alike: one persona, one reply language, one pronunciation
        self._framing = framing
        self._platform_tools = platform_tools
        self._agents = agents
        self._system_values = dict(system_values)
        self._on_end = on_end
        self._router_models = router_models
        self.supervision = supervision
        self._max_speculation = max_speculation
        self._variables: dict[uuid.UUID, CallVariables] = {}
        if initial_variables is not None:
            self._variables[team.initial_member_id] = initial_variables

    # -- who can take the call ------------------------------------------------------------------------------

    def catalog_agent(self, member: TeamMember) -> CatalogAgent | None:
        agent = self._agents.get(member.assistant_id)
        return agent if agent is not None and agent.enabled else None

    def available(self, member: TeamMember) -> bool:
        return member.enabled and self.catalog_agent(member) is not None

    def available_members(self) -> list[TeamMember]:
        return sorted((m for m in self.team.members if self.available(m)), key=lambda m: m.position)

    def resolve(self, requested: str) -> tuple[TeamMember | None, bool]:
        """(member to take the call, whether that is the fallback standing in for `requested`)."""
        wanted = next((m for m in self.team.members if m.router_name == requested), None)
        if wanted is not None and self.available(wanted):
            return wanted, False
        fallback = self.team.fallback_member
        if fallback is not None and self.available(fallback):
            return fallback, True
        return None, True

    def variables_for(self, member: TeamMember) -> CallVariables:
        variables = self._variables.get(member.id)
        if variables is None:
            agent = self.catalog_agent(member)
            assert agent is not None
            revision = agent.active_revision
            system = {**self._system_values, "agent_id": str(agent.id)}
            variables = CallVariables.bootstrap(
                revision.context_variables, defaults=revision.variable_defaults, seeds=None, system=system
            )
            self._variables[member.id] = variables
        return variables

    # -- agents ---------------------------------------------------------------------------------------------

    def initial_agent(self) -> CallAgent:
        member = self.team.initial_member
        if not self.available(member):
            raise ValueError(f"team {self.team.id}: initial member {member.router_name} is not available")
        team_route = self._team_route(member) if self.team.mode == "supervisor" else None
        return self.member_agent(member, team_route=team_route)

    def member_agent(
        self,
        member: TeamMember,
        *,
        chat_ctx: llm.ChatContext | None = None,
        reply_on_enter: bool = False,
        team_route: TeamRoute | None = None,
    ) -> CallAgent:
        catalog_agent = self.catalog_agent(member)
        assert catalog_agent is not None, "member_agent() for an unavailable member"
        revision = catalog_agent.active_revision
        supervisor = Supervisor.for_revision(
            revision,
            router_model=self._router_models(revision.router_model_settings),
            record=self.supervision,
            agent_id=catalog_agent.id,
            team_route=team_route,
            max_speculation=self._max_speculation,
        )
        return CallAgent(
            revision=revision,
            variables=self.variables_for(member),
            on_end=self._on_end,
            chat_ctx=chat_ctx,
            handoff_tool=self._transfer_tool(member),
            supervisor=supervisor,
            reply_on_enter=reply_on_enter,
            label=member.router_name,
            platform_tools=self._platform_tools,
            # a call_transfer tool hands a web caller to a member (None: the team's fallback member)
            team_handoff=lambda name, reason, chat_ctx: self.transfer(member, name or "", reason, chat_ctx),
            framing=self._framing,
        )

    # -- the team router (mode supervisor, turn 1) ----------------------------------------------------------

    def _team_route(self, member: TeamMember) -> TeamRoute | None:
        options = self.available_members()
        model = self._router_models(self.team.router_model_settings)
        if model is None or len(options) < 2:
            return None
        initial_revision = self.catalog_agent(member).active_revision  # type: ignore[union-attr]  # answering: enabled
        router = ConstrainedRouter(
            model,
            [RouteOption(m.router_name, m.router_description, tuple(m.examples)) for m in options],
            # Team has no router timeout of its own; the initial member's budget is the turn-1 budget.
            timeout_s=initial_revision.router_timeout_ms / 1000,
            subject="team_member",
            context=self.team.purpose,
        )

        async def route(utterance: str) -> str | None:
            result = await router.route(utterance)
            self.supervision.team_route = result
            if result.choice is None or result.choice == member.router_name:
                return None
            return result.choice

        return route

    # -- handoff --------------------------------------------------------------------------------------------

    def _transfer_tool(self, member: TeamMember) -> TransferTool | None:
        others = [m for m in self.available_members() if m.id != member.id]
        if not others:
            return None
        described = "; ".join(f"{m.router_name}: {m.router_description}" for m in others)
        schema = {
            "name": TRANSFER_TOOL,
            "description": (
                "Transfer the caller to another member of the team when their request belongs there. "
                f"Members: {described}"
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "member": {"type": "string", "enum": [m.router_name for m in others]},
                    "reason": {"type": "string", "description": "Why the caller is transferred, in a few words."},
                },
                "required": ["member", "reason"],
                "additionalProperties": False,
            },
        }

        # Raw arguments on purpose: a name outside the enum (a weak model, a catalog edited mid-call) must
        # reach the fallback rule instead of failing validation.
        async def transfer_to_member(raw_arguments: dict[str, object], context: RunContext[None]) -> Agent | str:
            requested = str(raw_arguments.get("member", "")).strip()
            reason = str(raw_arguments.get("reason", "")).strip()[:MAX_REASON_CHARS] or None
            return self.transfer(member, requested, reason, context.session.current_agent.chat_ctx)

        return function_tool(transfer_to_member, raw_schema=schema)

    def transfer(
        self, source: TeamMember, requested: str, reason: str | None, chat_ctx: llm.ChatContext
    ) -> CallAgent | str:
        """The agent that takes the call from `source`, or a message for `source`'s LLM if nobody can."""
        target, is_fallback = self.resolve(requested)
        if target is None or target.id == source.id:
            return f"{requested or 'That member'} cannot take the call; keep helping the caller yourself."
        if is_fallback:
            reason = f"fallback: {requested!r} is unavailable" + (f"; {reason}" if reason else "")
        history = chat_ctx.copy(exclude_instructions=True, exclude_function_call=True, exclude_config_update=True)
        agent = self.member_agent(target, chat_ctx=history, reply_on_enter=True)
        self.supervision.member_changes.append(
            MemberChange(at=datetime.now(UTC), from_member_id=source.id, to_member_id=target.id, reason=reason)
        )
        log.info(
            "team %s: %s -> %s (%s)",
            self.team.id,
            source.router_name,
            target.router_name,
            "team router" if reason == TEAM_ROUTER_REASON else "handoff",
        )
        return agent
