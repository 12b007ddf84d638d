"""The supervisor: which procedure an agent follows, chosen on the caller's first turn without making them wait.

Choice (`ProcedureSelector`): a keyword procedure whose phrase the first utterance contains wins outright
(highest priority first; no router call). Otherwise the router (procedures/router.py) picks among the
enabled `auto` procedures; "none", a router error or a router timeout fall back to the enabled `always_on`
procedure with the highest priority, else to the revision's own behaviour. Disabled procedures are never
offered and never chosen.

No waiting (`Supervisor`): the router starts at the first final transcript of turn 1 (the session's
`user_input_transcribed` event, or the first `llm_node` call, whichever comes first; they share one task),
which is inside the endpointing window. With preemptive generation on, `llm_node` runs at that same
moment, and it does not wait for the router: it opens one reply stream per candidate procedure (each
enabled auto procedure, up to `max_speculation - 1` by priority, plus the fallback), each under that
candidate's instructions and tools, concurrently with the router. When the router answers, the chosen
stream's buffered and remaining chunks are yielded and the others are cancelled, so turn 1 costs
max(router, LLM time to first token) instead of their sum. A procedure left out of the speculation (more
auto procedures than the cap) gets its stream only once chosen, and then pays the router's latency;
`max_speculation=0` turns speculation off altogether (the reply waits for the router: fewer tokens, a
slower turn 1). Speculation costs tokens, not time: the cancelled streams are cut off at the router's
answer, normally before their first token.

The agent's own instructions are left alone until the turn-1 reply is committed: livekit keeps a
preemptive reply only if the agent's chat context and tools are unchanged at end of turn, and changing
them would throw the reply away (the full router latency would then show). The commit signal is the
turn-1 user message entering the conversation (livekit adds it when the reply is scheduled); then the
chosen procedure's instructions and tools are applied with `update_instructions` / `update_tools`, and
turns 2+ run under them. Until then, any further generation of turn 1 (a tool follow-up) is given the
chosen procedure's instructions and tools by `llm_node` itself.

The supervisor also places the caller on turn 1 in a team call (team mode `supervisor`): the team router
runs concurrently with the procedure choice, and a move to another member is expressed as a call of the
member's own `transfer_to_member` tool, so the session hands off through its ordinary machinery.

Everything decided is recorded in `Supervision`, which the worker reads at the end of the call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from abc import abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from livekit.agents import Agent, AgentSession, FlushSentinel, llm
from livekit.agents.voice.agent import ModelSettings
from livekit.agents.voice.events import ConversationItemAddedEvent, UserInputTranscribedEvent

from catalog.models import Procedure, Revision
from procedures.router import ConstrainedRouter, RouteOption, RouteResult
from records.outcome import MemberChange, ProcedureChoice

log = logging.getLogger("voice_worker.supervisor")

DecisionReason = Literal[
    "keyword", "router", "always_on", "router_none", "router_error", "router_timeout", "no_procedures"
]
_ROUTER_MISSES: dict[str, DecisionReason] = {"none": "router_none", "timeout": "router_timeout"}

# What an agent's llm_node yields (livekit's `Agent.default.llm_node`).
LLMNodeChunk = llm.ChatChunk | str | FlushSentinel

# Beyond this many concurrent reply streams per turn the speculation costs more tokens than it saves time.
DEFAULT_MAX_SPECULATION = 4

TRANSFER_TOOL = "transfer_to_member"
TEAM_ROUTER_REASON = "team_router"

_NON_WORD = re.compile(r"[^\w']+")


def normalize(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces: how utterances and keyword phrases are compared."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def keyword_match(procedures: Sequence[Procedure], utterance: str) -> Procedure | None:
    """The enabled keyword procedure with the highest priority one of whose phrases occurs in `utterance`.

    Phrases match whole words, case-insensitively, ignoring punctuation ("Where is my order?" contains
    "where is my order"; "demo" does not match "demolition"). Equal priorities: first declared wins.
    """
    padded = f" {normalize(utterance)} "
    matching = [
        p
        for p in procedures
        if p.enabled
        and p.trigger_type == "keyword"
        and any((phrase := normalize(k)) and f" {phrase} " in padded for k in p.keywords)
    ]
    return max(matching, key=lambda p: p.priority, default=None)


def fallback_procedure(procedures: Sequence[Procedure]) -> Procedure | None:
    """The enabled `always_on` procedure with the highest priority (first declared on a tie)."""
    always = [p for p in procedures if p.enabled and p.trigger_type == "always_on"]
    return max(always, key=lambda p: p.priority, default=None)


@dataclass(frozen=True)
class ProcedureDecision:
    """A procedure choice. `procedure` None means the revision's own behaviour (no procedure)."""

    procedure: Procedure | None
    reason: DecisionReason
    router_latency_ms: float | None
    decided_at: datetime
    agent_id: uuid.UUID | None = None
    detail: str | None = None

    def as_choice(self) -> ProcedureChoice:
        """The session record's view of this decision."""
        return ProcedureChoice(
            id=self.procedure.id if self.procedure else None,
            name=self.procedure.name if self.procedure else None,
            router_latency_ms=self.router_latency_ms,
            reason=self.reason,
        )


@dataclass
class Supervision:
    """What was decided during one call: procedure choices (one per agent that answered a turn: a team call
    may have several) and member changes, in order. The worker reads it when the call ends."""

    decisions: list[ProcedureDecision] = field(default_factory=list)
    member_changes: list[MemberChange] = field(default_factory=list)
    team_route: RouteResult | None = None

    @property
    def procedure(self) -> ProcedureDecision | None:
        """The call's procedure choice for the session record: the first turn's."""
        return self.decisions[0] if self.decisions else None

    def procedure_choice(self) -> ProcedureChoice | None:
        return self.procedure.as_choice() if self.procedure else None


class ProcedureSelector:
    """The turn-1 decision over one revision's procedures, without any session state."""

    def __init__(
        self,
        revision: Revision,
        router_model: llm.LLM[Any] | None,
        *,
        timeout_ms: int | None = None,
        agent_id: uuid.UUID | None = None,
    ) -> None:
        enabled = revision.enabled_procedures()
        self.enabled = enabled
        self.keyword = tuple(p for p in enabled if p.trigger_type == "keyword")
        # by priority, then declaration order: the order speculation picks candidates in
        self.auto = tuple(sorted((p for p in enabled if p.trigger_type == "auto"), key=lambda p: -p.priority))
        self.fallback = fallback_procedure(enabled)
        self.agent_id = agent_id
        self._by_name = {p.name: p for p in self.auto}
        timeout_s = (timeout_ms if timeout_ms is not None else revision.router_timeout_ms) / 1000
        self.router: ConstrainedRouter | None = None
        if self.auto and router_model is not None:
            self.router = ConstrainedRouter(
                router_model,
                [RouteOption(p.name, p.description) for p in self.auto],
                timeout_s=timeout_s,
                subject="procedure",
            )

    def _decision(
        self, procedure: Procedure | None, reason: DecisionReason, latency_ms: float | None, detail: str | None = None
    ) -> ProcedureDecision:
        return ProcedureDecision(
            procedure=procedure,
            reason=reason,
            router_latency_ms=latency_ms,
            decided_at=datetime.now(UTC),
            agent_id=self.agent_id,
            detail=detail,
        )

    def immediate(self, utterance: str) -> ProcedureDecision | None:
        """The decision when no router call is needed, else None."""
        matched = keyword_match(self.keyword, utterance)
        if matched is not None:
            return self._decision(matched, "keyword", None)
        if not self.auto:
            # nothing for a router to choose among: the always-on procedure, or none at all
            return self._decision(self.fallback, "always_on" if self.fallback else "no_procedures", None)
        if self.router is None:
            return self._decision(self.fallback, "router_error", None, "no router model for this revision")
        return None

    async def decide(self, utterance: str) -> ProcedureDecision:
        decided = self.immediate(utterance)
        if decided is not None:
            return decided
        assert self.router is not None  # immediate() answers whenever there is no router
        result = await self.router.route(utterance)
        if result.outcome == "chosen" and result.choice in self._by_name:
            return self._decision(self._by_name[result.choice], "router", result.latency_ms)
        reason = _ROUTER_MISSES.get(result.outcome, "router_error")
        return self._decision(self.fallback, reason, result.latency_ms, result.detail)

    def candidates(self, max_speculation: int) -> list[Procedure | None]:
        """What to speculate on: the fallback (every router failure lands there) and as many auto
        procedures, by priority, as the cap leaves room for. A cap of 0 speculates on nothing: the reply
        waits for the router (fewer tokens, turn 1 slower by the router's latency)."""
        if max_speculation <= 0:
            return []
        return [*self.auto[: max_speculation - 1], self.fallback]


TeamRoute = Callable[[str], Coroutine[Any, Any, str | None]]
"""Turn-1 team routing for a member: the router name of the member to move the caller to, or None to stay."""


@dataclass
class _Turn:
    key: str
    decision: ProcedureDecision | None
    decision_task: asyncio.Task[ProcedureDecision] | None
    team_task: asyncio.Task[str | None] | None

    def ready(self) -> ProcedureDecision | None:
        if self.decision is not None:
            return self.decision
        task = self.decision_task
        if task is not None and task.done() and not task.cancelled():
            return task.result()
        return None

    def team_target(self) -> tuple[bool, str | None]:
        """(known, target): whether the team router has answered, and where it moves the caller."""
        task = self.team_task
        if task is None:
            return True, None
        if not task.done():
            return False, None
        return True, None if task.cancelled() else task.result()

    def cancel(self) -> None:
        for task in (self.decision_task, self.team_task):
            if task is not None and not task.done():
                task.cancel()


@dataclass
class Speculation:
    """One turn-1 generation: which candidate streams were opened, which one was kept."""

    opened: list[str]
    kept: str | None = None
    cancelled: list[str] = field(default_factory=list)
    transferred_to: str | None = None


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class _Stream:
    """One reply stream pumped into a buffer as it arrives, so a stream kept late loses no chunk."""

    def __init__(self, name: str, source: AsyncIterable[LLMNodeChunk]) -> None:
        self.name = name
        self._queue: asyncio.Queue[LLMNodeChunk | _End] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(source), name=f"supervisor.stream.{name}")

    async def _pump(self, source: AsyncIterable[LLMNodeChunk]) -> None:
        try:
            async for item in source:
                self._queue.put_nowait(item)
        except Exception as exc:  # re-raised by the consumer as the LLM's own error
            self._queue.put_nowait(_End(exc))
            return
        self._queue.put_nowait(_End(None))

    async def chunks(self) -> AsyncIterator[LLMNodeChunk]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item

    def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()


def _last_user_text(chat_ctx: llm.ChatContext) -> str | None:
    for item in reversed(chat_ctx.items):
        if item.type == "message" and item.role == "user":
            return item.text_content or ""
    return None


def _candidate_name(procedure: Procedure | None) -> str:
    return procedure.name if procedure is not None else "(default)"


class SupervisedAgent(Agent):
    """What the supervisor drives: an agent that can say which instructions and tools each procedure gets
    (procedures/agent.py `CallAgent`)."""

    @abstractmethod
    def instructions_for(self, procedure: Procedure | None) -> str: ...

    @abstractmethod
    def tools_for(self, procedure: Procedure | None) -> list[llm.Tool | llm.Toolset]: ...

    @abstractmethod
    def tool_ids_for(self, procedure: Procedure | None) -> frozenset[str]: ...


class Supervisor:
    """Turn-1 procedure choice (and team placement) for one `CallAgent`; see the module docstring."""

    def __init__(
        self,
        selector: ProcedureSelector,
        record: Supervision,
        *,
        team_route: TeamRoute | None = None,
        max_speculation: int = DEFAULT_MAX_SPECULATION,
    ) -> None:
        if max_speculation < 0:
            raise ValueError("max_speculation cannot be negative")
        self.selector = selector
        self.record = record
        self.max_speculation = max_speculation
        self.speculations: list[Speculation] = []
        self._team_route = team_route
        self._agent: SupervisedAgent | None = None
        self._session: AgentSession[Any] | None = None
        # turn-1 routings by utterance: a longer transcript routes again, but an older routing is kept
        # (never cancelled) because livekit may still commit the generation that awaits it
        self._turns: dict[str, _Turn] = {}
        self._committed: str | None = None
        self._finals: list[str] = []
        self._applying: asyncio.Task[None] | None = None
        self._settled = False
        self.decision: ProcedureDecision | None = None

    @classmethod
    def for_revision(
        cls,
        revision: Revision,
        *,
        router_model: llm.LLM[Any] | None,
        record: Supervision,
        agent_id: uuid.UUID | None = None,
        team_route: TeamRoute | None = None,
        max_speculation: int = DEFAULT_MAX_SPECULATION,
    ) -> Supervisor:
        selector = ProcedureSelector(revision, router_model, agent_id=agent_id)
        return cls(selector, record, team_route=team_route, max_speculation=max_speculation)

    @property
    def settled(self) -> bool:
        """True once the turn-1 choice is applied to the agent; from then on `llm_node` is livekit's own."""
        return self._settled

    # -- lifecycle (CallAgent.on_enter / on_exit) ----------------------------------------------------------

    def bind(self, agent: SupervisedAgent) -> None:
        if self._agent is not None and self._agent is not agent:
            raise RuntimeError("a Supervisor serves one agent")
        self._agent = agent
        if TRANSFER_TOOL not in agent.tool_ids_for(None):
            # a team router's answer could not be acted on without the member's transfer tool
            self._team_route = None

    def start(self, session: AgentSession[Any], chat_ctx: llm.ChatContext) -> None:
        self._session = session
        # An agent entered by handoff inherits a conversation: its last user message is already committed.
        last = _last_user_text(chat_ctx)
        if last:
            self._committed = normalize(last)
        session.on("user_input_transcribed", self._on_transcribed)
        session.on("conversation_item_added", self._on_item_added)

    def stop(self) -> None:
        if self._session is not None:
            self._session.off("user_input_transcribed", self._on_transcribed)
            self._session.off("conversation_item_added", self._on_item_added)
        self._cancel_turns()

    def _cancel_turns(self) -> None:
        for turn in self._turns.values():
            turn.cancel()

    # -- turn-1 routing ------------------------------------------------------------------------------------

    def _on_transcribed(self, event: UserInputTranscribedEvent) -> None:
        if self._settled or not event.is_final or not event.transcript.strip():
            return
        # the session joins a turn's final segments the same way before it generates
        self._finals.append(event.transcript.strip())
        self._ensure_turn(" ".join(self._finals))

    def _on_item_added(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if self._settled or item.type != "message" or item.role != "user":
            return
        self._finals.clear()
        self._committed = normalize(item.text_content or "")
        self._maybe_apply()

    def _ensure_turn(self, utterance: str) -> _Turn:
        key = normalize(utterance)
        turn = self._turns.get(key)
        if turn is not None:
            return turn
        immediate = self.selector.immediate(utterance)
        decision_task = None
        if immediate is None:
            decision_task = asyncio.create_task(self.selector.decide(utterance), name="supervisor.route")
        team_task = None
        if self._team_route is not None:
            team_task = asyncio.create_task(self._team_route(utterance), name="supervisor.team_route")
        turn = _Turn(key=key, decision=immediate, decision_task=decision_task, team_task=team_task)
        self._turns[key] = turn
        for task in (decision_task, team_task):
            if task is not None:
                task.add_done_callback(lambda _: self._maybe_apply())
        self._maybe_apply()
        return turn

    def _maybe_apply(self) -> None:
        """Apply the choice once both are known: the decision, and that its utterance was committed."""
        if self._settled or self._applying is not None or self._committed is None:
            return
        turn = self._turns.get(self._committed)
        if turn is None:
            return
        decision = turn.ready()
        known, target = turn.team_target()
        if decision is None or not known:
            return
        if target is not None:
            # the caller moves to another member, who makes its own choice; nothing to apply here
            return
        self._applying = asyncio.create_task(self._apply(decision), name="supervisor.apply")

    async def _apply(self, decision: ProcedureDecision) -> None:
        agent = self._agent
        assert agent is not None
        try:
            if decision.procedure is not None:
                await agent.update_instructions(agent.instructions_for(decision.procedure))
                tools = agent.tools_for(decision.procedure)
                if {t.id for t in tools} != {t.id for t in agent.tools}:
                    await agent.update_tools(tools)
        except RuntimeError:
            # the agent left the session (handoff, close) between the commit and now
            log.warning("procedure %s not applied: the agent is no longer active", decision.reason)
            return
        self.decision = decision
        self._settled = True
        self.record.decisions.append(decision)
        self._cancel_turns()
        log.info(
            "procedure chosen: %s (reason=%s, router %.0f ms%s)",
            decision.procedure.name if decision.procedure else "none",
            decision.reason,
            decision.router_latency_ms or 0.0,
            f", {decision.detail}" if decision.detail else "",
        )

    # -- the agent's llm_node ------------------------------------------------------------------------------

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterator[LLMNodeChunk]:
        agent = self._agent
        assert agent is not None, "Supervisor.llm_node before bind()"
        utterance = None if self._settled else _last_user_text(chat_ctx)
        if utterance is None or not utterance.strip():
            # settled, or a reply with no caller words to route on (a dynamic greeting)
            async for chunk in Agent.default.llm_node(agent, chat_ctx, tools, model_settings):
                yield chunk
            return

        turn = self._ensure_turn(utterance)
        decision = turn.ready()
        candidates = [decision.procedure] if decision is not None else self.selector.candidates(self.max_speculation)
        streams: dict[str, _Stream] = {}
        for candidate in candidates:
            name = _candidate_name(candidate)
            streams[name] = self._open(name, candidate, chat_ctx, tools, model_settings)
        speculation = Speculation(opened=list(streams))
        self.speculations.append(speculation)
        try:
            if turn.team_task is not None:
                target = await asyncio.shield(turn.team_task)
                if target is not None and any(t.id == TRANSFER_TOOL for t in tools):
                    speculation.transferred_to = target
                    yield _transfer_chunk(target)
                    return
            if decision is None:
                assert turn.decision_task is not None
                decision = await asyncio.shield(turn.decision_task)
            name = _candidate_name(decision.procedure)
            chosen = streams.pop(name, None) or self._open(name, decision.procedure, chat_ctx, tools, model_settings)
            speculation.kept = name
            for other in streams.values():
                other.cancel()
                speculation.cancelled.append(other.name)
            streams = {name: chosen}
            async for chunk in chosen.chunks():
                yield chunk
        finally:
            for stream in streams.values():
                stream.cancel()

    def _open(
        self,
        name: str,
        procedure: Procedure | None,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> _Stream:
        agent = self._agent
        assert agent is not None
        if procedure is not None:
            chat_ctx = chat_ctx.copy()
            _set_instructions(chat_ctx, agent.instructions_for(procedure))
            allowed = agent.tool_ids_for(procedure)
            tools = [t for t in tools if t.id in allowed]
        return _Stream(name, Agent.default.llm_node(agent, chat_ctx, tools, model_settings))


def _set_instructions(chat_ctx: llm.ChatContext, text: str) -> None:
    """`text` as the agent's instructions in this copy of the context: livekit keeps them as the first system
    message (its id and time kept, so the message is the one livekit itself would update), else they go first."""
    for index, item in enumerate(chat_ctx.items):
        if isinstance(item, llm.ChatMessage) and item.role in ("system", "developer"):
            chat_ctx.items[index] = llm.ChatMessage(
                id=item.id, role=item.role, content=[text], created_at=item.created_at
            )
            return
    chat_ctx.items.insert(0, llm.ChatMessage(role="system", content=[text]))


def _transfer_chunk(target: str) -> llm.ChatChunk:
    call_id = f"team_route_{uuid.uuid4().hex[:12]}"
    return llm.ChatChunk(
        id=call_id,
        delta=llm.ChoiceDelta(
            role="assistant",
            tool_calls=[
                llm.FunctionToolCall(
                    name=TRANSFER_TOOL,
                    arguments=json.dumps({"member": target, "reason": TEAM_ROUTER_REASON}),
                    call_id=call_id,
                )
            ],
        ),
    )
