"""Turn-1 procedure choice in text-mode conversations with the example support agent.

The router and the reply model are separate scripted doubles. Reply streams wait until the router has
answered, so which streams were cancelled and which one ran to completion is decided by the supervisor
alone, never by a race between sleeps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from livekit.agents import AgentSession, llm
from livekit.agents._exceptions import APIConnectionError
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from catalog.loader import load_catalog
from catalog.models import Procedure, Revision
from catalog.variables import CallVariables
from contract.settings import EXAMPLE_CATALOG
from procedures.agent import CallAgent
from procedures.supervisor import Supervision, Supervisor
from tests.doubles.fake_llm import FakeLLM, FakeLLMStream, Reply

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
CATALOG = load_catalog(EXAMPLE_CATALOG)
SUPPORT_REVISION = CATALOG.agents[SUPPORT].active_revision

# One phrase of each procedure's instructions, to tell which procedure a reply request ran under.
MARKERS = {
    "refund_request": "Handle a refund.",
    "order_status": "track an order",
    "general_help": "Answer general questions briefly.",
    "manager_escalation": "offer a callback from a manager",
}


def procedure_in(instructions: str | None) -> str:
    found = [name for name, marker in MARKERS.items() if marker in (instructions or "")]
    assert len(found) <= 1, found
    return found[0] if found else "default"


def system_text(chat_ctx: llm.ChatContext) -> str:
    return "\n".join(m.text_content or "" for m in chat_ctx.messages() if m.role == "system")


class TrackedStream(FakeLLMStream):
    async def _run(self) -> None:
        try:
            await super()._run()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.completed = True


class TrackingLLM(FakeLLM):
    """A FakeLLM that remembers each stream: what it ran under, and whether it finished or was cancelled."""

    def __init__(self, script: Any) -> None:
        super().__init__(script)
        self.streams: list[TrackedStream] = []

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> TrackedStream:
        stream = TrackedStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)
        stream.procedure = procedure_in(system_text(chat_ctx))
        stream.completed = stream.cancelled = False
        stream.user_text = next((m.text_content for m in reversed(chat_ctx.messages()) if m.role == "user"), None)
        self.streams.append(stream)
        return stream

    def for_turn(self, user_text: str) -> list[TrackedStream]:
        return [s for s in self.streams if s.user_text == user_text]


class Doubles:
    """A router answering by utterance and a reply model that answers "[procedure] ...". With `hold`, reply
    streams start but produce nothing until the router has answered (set it False when no router call is
    expected, e.g. a keyword turn)."""

    def __init__(self, route: Callable[[str], Reply | str], *, hold: bool = True) -> None:
        self.routed = asyncio.Event()
        if not hold:
            self.routed.set()
        self.enums: list[list[str]] = []

        async def router_script(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
            self.enums.append(list(tools[0].info.raw_schema["parameters"]["properties"]["name"]["enum"]))
            utterance = next(m.text_content for m in chat_ctx.messages() if m.role == "user")
            answer = route(utterance or "")
            self.routed.set()
            return answer if isinstance(answer, Reply) else Reply(tool_calls=[("choose_procedure", {"name": answer})])

        async def reply_script(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
            await asyncio.wait_for(self.routed.wait(), 10)
            return Reply(text=f"[{procedure_in(system_text(chat_ctx))}] reply", ttft_s=0.01)

        self.router = FakeLLM(router_script)
        self.reply = TrackingLLM(reply_script)


async def start_support(
    doubles: Doubles, *, revision: Revision = SUPPORT_REVISION, max_speculation: int = 4
) -> tuple[AgentSession, CallAgent, Supervisor, Supervision]:
    variables = CallVariables.bootstrap(
        revision.context_variables, defaults=revision.variable_defaults, seeds=None, system={}
    )
    supervision = Supervision()
    supervisor = Supervisor.for_revision(
        revision, router_model=doubles.router, record=supervision, agent_id=SUPPORT, max_speculation=max_speculation
    )
    agent = CallAgent(revision=revision, variables=variables, on_end=lambda _: None, supervisor=supervisor)
    session = AgentSession(llm=doubles.reply)
    await session.start(agent)
    return session, agent, supervisor, supervision


async def settled(supervisor: Supervisor) -> None:
    # the choice is applied on a task of its own right after the turn-1 message is committed
    async with asyncio.timeout(5):
        while not supervisor.settled:
            await asyncio.sleep(0.005)


def last_reply(result: Any) -> str:
    messages = [e.item for e in result.events if e.type == "message" and e.item.role == "assistant"]
    return messages[-1].text_content


ROUTES = {"money back": "refund_request", "gift cards": "none", "manager": "manager_escalation"}


def route_by_phrase(utterance: str) -> str:
    return next((name for phrase, name in ROUTES.items() if phrase in utterance.lower()), "none")


@pytest.mark.parametrize(
    ("utterance", "procedure", "reason", "router_calls"),
    [
        ("I want my money back for the blender I bought", "refund_request", "router", 1),
        ("Hi, where is my order? It was due Monday.", "order_status", "keyword", 0),
        ("Do you sell gift cards?", "general_help", "router_none", 1),
        # manager_escalation is disabled: a router that would pick it cannot, and the call goes on
        ("I am furious, get me a manager now", "general_help", "router_error", 1),
    ],
)
async def test_first_utterance_picks_the_procedure(utterance: str, procedure: str, reason: str, router_calls: int):
    doubles = Doubles(route_by_phrase, hold=router_calls > 0)
    session, agent, supervisor, supervision = await start_support(doubles)
    async with session:
        result = await session.run(user_input=utterance)
        assert last_reply(result) == f"[{procedure}] reply"
        await settled(supervisor)

        assert len(doubles.router.calls) == router_calls
        decision = supervision.procedure
        assert decision is not None and decision.reason == reason
        assert decision.procedure is not None and decision.procedure.name == procedure
        assert (decision.router_latency_ms is None) == (router_calls == 0)
        record = supervision.procedure_choice()
        assert record is not None and record.model_dump() == {
            "id": decision.procedure.id,
            "name": procedure,
            "router_latency_ms": decision.router_latency_ms,
            "reason": reason,
        }

        # turn 2 runs under the chosen procedure, without routing again
        result = await session.run(user_input="ok, and then?")
        assert last_reply(result) == f"[{procedure}] reply"
        assert len(doubles.router.calls) == router_calls
        assert procedure_in(agent.instructions) == procedure


async def test_disabled_procedure_is_never_offered():
    doubles = Doubles(route_by_phrase)
    session, _, supervisor, _ = await start_support(doubles)
    async with session:
        await session.run(user_input="I am furious, get me a manager now")
        await settled(supervisor)
    assert doubles.enums == [["refund_request", "none"]]
    prompt = doubles.router.calls[0].instructions or ""
    assert "refund_request" in prompt
    assert "manager_escalation" not in prompt and "manager" not in prompt.lower()
    # keyword and always-on procedures are not the router's business either
    assert "order_status" not in prompt and "general_help" not in prompt
    assert all(s.procedure != "manager_escalation" for s in doubles.reply.streams)


async def test_turn_one_reply_is_one_stream_under_the_chosen_procedure():
    doubles = Doubles(route_by_phrase)
    session, _, supervisor, _ = await start_support(doubles)
    async with session:
        await session.run(user_input="I want my money back")
        await settled(supervisor)
        turn1 = doubles.reply.for_turn("I want my money back")
        # one speculative stream per candidate (the auto procedure and the always-on fallback), at once
        assert sorted(s.procedure for s in turn1) == ["general_help", "refund_request"]
        assert [s.procedure for s in turn1 if s.completed] == ["refund_request"]
        assert [s.procedure for s in turn1 if s.cancelled] == ["general_help"]
        kept = next(s for s in turn1 if s.completed)
        assert "Handle a refund." in system_text(kept.chat_ctx)
        assert "You are Acme's phone support agent" in system_text(kept.chat_ctx)
        assert supervisor.speculations[0].opened == ["refund_request", "general_help"]
        assert supervisor.speculations[0].kept == "refund_request"

        await session.run(user_input="order 1234, a blender")
        turn2 = doubles.reply.for_turn("order 1234, a blender")
        assert len(turn2) == 1 and turn2[0].completed and turn2[0].procedure == "refund_request"
        call = next(c for c in doubles.reply.calls if c.last_user_text == "order 1234, a blender")
        assert call.tool_names == ("end_call", "record_variable")
    assert len(doubles.router.calls) == 1


@pytest.mark.parametrize(
    ("router_reply", "reason"),
    [
        (Reply(error=APIConnectionError()), "router_error"),
        (Reply(text="I think it is about refunds"), "router_error"),
        (Reply(tool_calls=[("choose_procedure", {"name": "refund_request"})], ttft_s=5.0), "router_timeout"),
    ],
)
async def test_router_failure_falls_back_to_always_on_and_the_call_goes_on(router_reply: Reply, reason: str):
    doubles = Doubles(lambda _: router_reply)
    session, _, supervisor, supervision = await start_support(doubles)
    async with session:
        result = await session.run(user_input="I want my money back")
        assert last_reply(result) == "[general_help] reply"
        await settled(supervisor)
        decision = supervision.procedure
        assert decision is not None and decision.reason == reason
        assert decision.procedure is not None and decision.procedure.name == "general_help"
        if reason == "router_timeout":
            # the revision's 400 ms budget, not the router's 5 s
            assert 350 <= decision.router_latency_ms < 4000

        result = await session.run(user_input="thanks")
        assert last_reply(result) == "[general_help] reply"


def _auto(name: str, priority: int, tools: tuple[str, ...] = ("end_call",)) -> Procedure:
    return Procedure(
        id=uuid.uuid4(),
        name=name,
        description=f"The caller asks about {name}.",
        priority=priority,
        trigger_type="auto",
        instructions=f"Handle {name}.",
        tools=tools,
    )


async def test_speculation_is_capped_and_an_unspeculated_choice_still_answers():
    procedures = tuple(_auto(f"topic_{i}", priority=10 - i) for i in range(5))
    revision = SUPPORT_REVISION.model_copy(update={"procedures": procedures})
    for p in procedures:
        MARKERS[p.name] = f"Handle {p.name}."
    try:
        doubles = Doubles(lambda _: "topic_4")
        session, _, supervisor, supervision = await start_support(doubles, revision=revision, max_speculation=3)
        async with session:
            result = await session.run(user_input="about topic four")
            assert last_reply(result) == "[topic_4] reply"
            await settled(supervisor)
            # two auto procedures by priority, plus the fallback (no always-on here: the revision's default)
            assert supervisor.speculations[0].opened == ["topic_0", "topic_1", "(default)"]
            assert supervisor.speculations[0].cancelled == ["topic_0", "topic_1", "(default)"]
            assert supervisor.speculations[0].kept == "topic_4"
            assert supervision.procedure.procedure.name == "topic_4"

            # the procedure grants end_call only: record_variable is gone from turn 2 on
            await session.run(user_input="next")
            call = next(c for c in doubles.reply.calls if c.last_user_text == "next")
            assert call.tool_names == ("end_call",)
    finally:
        for p in procedures:
            MARKERS.pop(p.name)


async def test_no_enabled_procedures_needs_no_router_and_keeps_the_default():
    disabled = tuple(p.model_copy(update={"enabled": False}) for p in SUPPORT_REVISION.procedures)
    revision = SUPPORT_REVISION.model_copy(update={"procedures": disabled})
    doubles = Doubles(route_by_phrase, hold=False)
    session, _, supervisor, supervision = await start_support(doubles, revision=revision)
    async with session:
        result = await session.run(user_input="where is my order")
        assert last_reply(result) == "[default] reply"
        await settled(supervisor)
    assert doubles.router.calls == []
    choice = supervision.procedure_choice()
    assert choice is not None and choice.model_dump() == {
        "id": None,
        "name": None,
        "router_latency_ms": None,
        "reason": "no_procedures",
    }
