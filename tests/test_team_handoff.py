"""Team calls in text mode: the team router places the caller on turn 1, members hand off with the
conversation kept, an unavailable target lands on the fallback member, and every change is recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from livekit.agents import AgentSession, llm

from catalog.loader import load_catalog
from catalog.models import Team, TeamMember
from contract.settings import EXAMPLE_CATALOG
from procedures.agent import CallAgent
from procedures.supervisor import TEAM_ROUTER_REASON, Supervision
from procedures.team import TeamCall
from records.outcome import MemberChange as MemberChangeRecord
from tests.doubles.fake_llm import FakeLLM, Reply

CATALOG = load_catalog(EXAMPLE_CATALOG)
TEAM = CATALOG.teams[uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")]
SUPPORT_AGENT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
SALES_AGENT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02")
SUPPORT_MEMBER = TEAM.initial_member
SALES_MEMBER = next(m for m in TEAM.members if m.router_name == "sales")


def speaker(chat_ctx: llm.ChatContext) -> str:
    system = "\n".join(m.text_content or "" for m in chat_ctx.messages() if m.role == "system")
    return "sales" if "sales assistant" in system else "support" if "phone support agent" in system else "?"


class Doubles:
    """One router double for both routers (told apart by their tool) and a reply double that answers as
    whoever's system prompt it was given; `reply_for` may script a member's reply (e.g. a transfer)."""

    def __init__(
        self,
        *,
        team_choice: str = "none",
        procedure_choice: str = "none",
        reply_for: Callable[[str, llm.ChatContext], Reply | None] | None = None,
    ) -> None:
        self.team_requests = 0

        def route(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
            tool = tools[0].id
            if tool == "choose_team_member":
                self.team_requests += 1
                return Reply(tool_calls=[(tool, {"name": team_choice})])
            return Reply(tool_calls=[(tool, {"name": procedure_choice})])

        def reply(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
            who = speaker(chat_ctx)
            scripted = reply_for(who, chat_ctx) if reply_for else None
            return scripted or Reply(text=f"{who} speaking")

        self.router = FakeLLM(route)
        self.reply = FakeLLM(reply)


def team_call(doubles: Doubles, team: Team = TEAM, agents=CATALOG.agents) -> tuple[TeamCall, Supervision]:
    supervision = Supervision()
    call = TeamCall(
        team=team,
        agents=agents,
        system_values={"session_id": str(uuid.uuid4()), "team_id": str(team.id)},
        on_end=lambda _: None,
        router_models=lambda _entry: doubles.router,
        supervision=supervision,
    )
    return call, supervision


def assistant_texts(session: AgentSession) -> list[str]:
    return [m.text_content or "" for m in session.history.messages() if m.role == "assistant"]


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_team_router_moves_the_caller_on_turn_one_with_the_history():
    doubles = Doubles(team_choice="sales", procedure_choice="pricing_question")
    call, supervision = team_call(doubles)
    initial = call.initial_agent()
    assert isinstance(initial, CallAgent) and initial.id == "support"
    async with AgentSession(llm=doubles.reply) as session:
        await session.start(initial)
        await session.say("Hi, you've reached Acme. How can I help?")
        result = await session.run(user_input="How much is the Pro plan for five seats?")
        result.expect.contains_function_call(
            name="transfer_to_member", arguments={"member": "sales", "reason": TEAM_ROUTER_REASON}
        )
        result.expect.contains_agent_handoff(new_agent_type=CallAgent)
        assert session.current_agent.id == "sales"
        await wait_for(lambda: assistant_texts(session)[-1:] == ["sales speaking"])

        # sales answered with the conversation so far: the greeting and the caller's question
        sales_turn = next(c for c in doubles.reply.calls if c.last_user_text and speaker_of(c) == "sales")
        texts = [(m.role, m.text) for m in sales_turn.messages]
        assert ("assistant", "Hi, you've reached Acme. How can I help?") in texts
        assert ("user", "How much is the Pro plan for five seats?") in texts
        assert "Explain Starter and Pro" in (sales_turn.instructions or "")  # sales's own procedure choice

        await wait_for(lambda: supervision.decisions != [])
        result = await session.run(user_input="And the Starter plan?")
        assert assistant_texts(session)[-1] == "sales speaking"

    assert doubles.team_requests == 1  # turn 1 only
    [change] = supervision.member_changes
    assert (change.from_member_id, change.to_member_id, change.reason) == (
        SUPPORT_MEMBER.id,
        SALES_MEMBER.id,
        TEAM_ROUTER_REASON,
    )
    assert isinstance(change, MemberChangeRecord)  # the session record's own type, not a copy to convert
    [decision] = supervision.decisions  # support's choice was never applied: the caller left it
    assert decision.agent_id == SALES_AGENT and decision.procedure.name == "pricing_question"
    assert supervision.team_route is not None and supervision.team_route.choice == "sales"


def speaker_of(call) -> str:
    return "sales" if "sales assistant" in (call.instructions or "") else "support"


async def test_team_router_none_keeps_the_initial_member_and_its_procedure():
    doubles = Doubles(team_choice="none", procedure_choice="refund_request")
    call, supervision = team_call(doubles)
    async with AgentSession(llm=doubles.reply) as session:
        await session.start(call.initial_agent())
        await session.run(user_input="I want a refund for my blender")
        assert session.current_agent.id == "support"
        await wait_for(lambda: supervision.decisions != [])
    assert supervision.member_changes == []
    assert supervision.procedure.procedure.name == "refund_request"
    assert supervision.procedure.agent_id == SUPPORT_AGENT


def three_member_team(**billing_changes) -> Team:
    """sales greets, support is the fallback, billing is the target the tests make unavailable."""
    fields = {
        "id": uuid.uuid4(),
        "assistant_id": SUPPORT_AGENT,
        "router_name": "billing",
        "router_description": "Invoices and payments.",
        "position": 2,
    }
    billing = TeamMember(**{**fields, **billing_changes})
    return TEAM.model_copy(
        update={
            "mode": "swarm",
            "members": (*TEAM.members, billing),
            "initial_member_id": SALES_MEMBER.id,
            "fallback_member_id": SUPPORT_MEMBER.id,
        }
    )


@pytest.mark.parametrize(
    ("team", "agents", "requested", "offered"),
    [
        (three_member_team(enabled=False), CATALOG.agents, "billing", ["support"]),  # member disabled
        (three_member_team(assistant_id=uuid.uuid4()), CATALOG.agents, "billing", ["support"]),  # agent missing
        (three_member_team(), CATALOG.agents, "nobody", ["support", "billing"]),  # not a member at all
    ],
    ids=["disabled-member", "missing-agent", "unknown-name"],
)
async def test_handoff_to_an_unavailable_member_lands_on_the_fallback(team, agents, requested, offered):
    def reply_for(who: str, chat_ctx: llm.ChatContext) -> Reply | None:
        last = chat_ctx.items[-1]
        if who == "sales" and last.type == "message" and last.role == "user":
            return Reply(tool_calls=[("transfer_to_member", {"member": requested, "reason": "billing question"})])
        return None

    doubles = Doubles(reply_for=reply_for)
    call, supervision = team_call(doubles, team, agents)
    initial = call.initial_agent()
    # the transfer tool offers only members that can take the call
    transfer = next(t for t in initial.tools if getattr(t, "id", None) == "transfer_to_member")
    assert transfer.info.raw_schema["parameters"]["properties"]["member"]["enum"] == offered
    async with AgentSession(llm=doubles.reply) as session:
        await session.start(initial)
        await session.run(user_input="I have a question about my invoice")
        assert session.current_agent.id == "support"
        await wait_for(lambda: assistant_texts(session)[-1:] == ["support speaking"])
        support_turn = next(c for c in doubles.reply.calls if speaker_of(c) == "support")
        assert ("user", "I have a question about my invoice") in [(m.role, m.text) for m in support_turn.messages]

    [change] = supervision.member_changes
    assert (change.from_member_id, change.to_member_id) == (SALES_MEMBER.id, SUPPORT_MEMBER.id)
    assert change.reason == f"fallback: {requested!r} is unavailable; billing question"


def test_with_nobody_to_take_the_call_the_member_is_told_and_keeps_it():
    agents = {k: v for k, v in CATALOG.agents.items() if k != SUPPORT_AGENT}  # billing and support gone
    call, supervision = team_call(Doubles(), three_member_team(), agents)
    assert call.resolve("billing") == (None, True)
    assert call.initial_agent().tool_ids_for(None) == {"end_call", "record_variable"}  # nowhere to transfer to
    answer = call.transfer(SALES_MEMBER, "billing", "invoice", llm.ChatContext.empty())
    assert isinstance(answer, str) and "cannot take the call" in answer
    # and a member never "moves" to itself (support is the fallback of its own failed transfer)
    call, _ = team_call(Doubles())
    assert isinstance(call.transfer(SUPPORT_MEMBER, "nobody", None, llm.ChatContext.empty()), str)
    assert supervision.member_changes == []


async def test_swarm_mode_has_no_team_router():
    doubles = Doubles(team_choice="sales")
    call, supervision = team_call(doubles, TEAM.model_copy(update={"mode": "swarm"}))
    async with AgentSession(llm=doubles.reply) as session:
        await session.start(call.initial_agent())
        await session.run(user_input="How much is the Pro plan?")
        assert session.current_agent.id == "support"
    assert doubles.team_requests == 0
    assert supervision.member_changes == [] and supervision.team_route is None
