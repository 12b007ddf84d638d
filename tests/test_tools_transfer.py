"""call_transfer tools: a phone caller is transferred over LiveKit SIP (cold: a REFER; warm: WarmTransferTask),
a web caller in a team call goes to a team member, and any other web caller gets an answer the model can say."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import AgentSession, llm
from livekit.agents.llm import ToolError
from livekit.agents.testing import fake_job_context

from calls.bootstrap import start_call
from calls.call import CallServices
from catalog.loader import CatalogStore, load_catalog
from catalog.tools import ToolDefinition
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from procedures.agent import CallAgent
from procedures.supervisor import Supervision
from procedures.team import TeamCall
from tests.doubles.fake_llm import FakeLLM, Reply
from tools.config import ToolConfig
from tools.function_tools import CallTools
from tools.transfer import NO_PHONE_LINE, TransferLine
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
TEAM = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")


def transfer_tool(mode: str = "cold", destination: str = "+15105550100", web_member: str | None = "sales"):
    return ToolDefinition.model_validate(
        {
            "id": str(uuid.uuid4()),
            "slug": "escalate",
            "name": "Escalate",
            "description": "Transfer the caller to a person when they ask for one.",
            "tool_type": "call_transfer",
            "transfer_target": {"destination": destination, "mode": mode, "web_member": web_member},
        }
    )


@dataclass
class PhoneLine:
    """A session whose caller is a SIP participant, as far as the transfer code can tell."""

    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
    identity: str = "sip_+15550001111"
    shutdowns: list[bool] = field(default_factory=list)

    @property
    def room_io(self) -> Any:
        participant = type("Participant", (), {"kind": self.kind, "identity": self.identity})()
        return type("RoomIO", (), {"linked_participant": participant})()

    def shutdown(self, *, drain: bool = True) -> None:
        self.shutdowns.append(drain)


class Recorder:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.error = error

    async def __call__(self, *args: Any) -> None:
        self.calls.append(args)
        if self.error is not None:
            raise self.error


async def test_a_phone_caller_is_cold_transferred_over_sip():
    ended: list[str] = []
    sip = Recorder()
    line = TransferLine(on_end=ended.append, sip_transfer=sip)
    session = PhoneLine()
    outcome = await line.transfer(transfer_tool(), session, llm.ChatContext(), "asked for a person", None)
    assert outcome.status == "transferred" and sip.calls == [("sip_+15550001111", "tel:+15105550100")]
    assert ended == ["transferred"]

    sip_uri = await line.transfer(
        transfer_tool(destination="sip:desk@pbx.example"), session, llm.ChatContext(), None, None
    )
    assert sip_uri.status == "transferred" and sip.calls[-1] == ("sip_+15550001111", "sip:desk@pbx.example")


async def test_a_refused_sip_transfer_keeps_the_caller_with_the_agent():
    ended: list[str] = []
    line = TransferLine(on_end=ended.append, sip_transfer=Recorder(RuntimeError("SIP 603 decline")))
    outcome = await line.transfer(transfer_tool(), PhoneLine(), llm.ChatContext(), None, None)
    assert outcome.status == "error" and outcome.error == "RuntimeError" and ended == []
    assert "did not go through" in str(outcome.reply)


async def test_a_warm_transfer_dials_through_the_trunk_and_the_agent_leaves():
    ended: list[str] = []
    warm = Recorder()
    session = PhoneLine()
    chat_ctx = llm.ChatContext()
    line = TransferLine(on_end=ended.append, sip_outbound_trunk_id="ST_trunk", warm_transfer=warm)
    outcome = await line.transfer(
        transfer_tool(mode="warm", destination="tel:+15105550100"), session, chat_ctx, None, None
    )
    assert outcome.status == "transferred" and warm.calls == [("+15105550100", "ST_trunk", chat_ctx)]
    assert ended == ["transferred"] and session.shutdowns == [True]

    declined = TransferLine(
        on_end=ended.append, sip_outbound_trunk_id="ST_trunk", warm_transfer=Recorder(ToolError("x"))
    )
    outcome = await declined.transfer(transfer_tool(mode="warm"), PhoneLine(), chat_ctx, None, None)
    assert outcome.status == "unavailable" and ended == ["transferred"]
    no_trunk = await TransferLine(on_end=ended.append).transfer(
        transfer_tool(mode="warm"), PhoneLine(), chat_ctx, None, None
    )
    assert no_trunk.status == "unavailable" and no_trunk.error == "no SIP trunk"


async def test_a_web_caller_is_not_sent_to_a_phone_line():
    sip = Recorder()
    line = TransferLine(on_end=lambda _: None, sip_transfer=sip)
    web = PhoneLine(kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD)
    outcome = await line.transfer(transfer_tool(), web, llm.ChatContext(), None, None)
    assert (outcome.status, outcome.reply) == ("unavailable", NO_PHONE_LINE) and sip.calls == []


# -- in a call ------------------------------------------------------------------------------------------------


def asks_for_a_person(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
    if tools and tools[0].id in ("choose_procedure", "choose_team_member"):
        return Reply(tool_calls=[(tools[0].id, {"name": "none"})])
    last = chat_ctx.items[-1]
    if isinstance(last, llm.FunctionCallOutput):
        return Reply(text=f"Transfer result: {last.output}")
    system = "\n".join(m.text_content or "" for m in chat_ctx.messages() if m.role == "system")
    if "sales assistant" in system:
        return Reply(text="Sales here, how can I help?")
    if any(t.id == "escalate" for t in tools):
        return Reply(tool_calls=[("escalate", {"reason": "wants a person"})])
    return Reply(text="no escalate tool")


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target)
    (target / "tools" / "escalate.yaml").write_text(
        "kind: tool\n"
        f"id: {uuid.uuid4()}\n"
        "slug: escalate\n"
        "name: Escalate\n"
        "description: Transfer the caller to a person when they ask for one.\n"
        "tool_type: call_transfer\n"
        "transfer_target: {destination: '+15105550100', mode: cold, web_member: sales}\n"
    )
    support = target / "support.yaml"
    text = support.read_text().replace(
        "      - {slug: order_lookup,", "      - {slug: escalate, kind: api}\n      - {slug: order_lookup,"
    )
    # every procedure grants it (the general_help fallback is where a "none" choice lands)
    text = text.replace(
        "tools: [end_call, record_variable, handoff]", "tools: [end_call, record_variable, handoff, escalate]"
    )
    support.write_text(text)
    return target


async def test_a_web_caller_outside_a_team_hears_why_there_is_no_transfer(catalog_dir: Path):
    settings = Settings(_env_file=None, VOICE_WORKER_MODE="dev", OPENAI_API_KEY="sk-x", DEEPGRAM_API_KEY="dg-x")
    fake = FakeLLM(asks_for_a_person)
    services = CallServices(
        settings=settings, catalog=CatalogStore(catalog_dir), session_kwargs=lambda _: {"llm": fake}
    )
    request = DispatchRequest(session_id=uuid.uuid4(), session_type="test", agent_id=SUPPORT)
    meta = mint_dispatch_metadata(request, secret=settings.signing_secret(), issuer=settings.dispatch_issuer)
    with fake_job_context(job_metadata=meta) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            result = await call.session.run(user_input="Can I talk to a human?")
            result.expect.contains_function_call(name="escalate")
            said = [m.text_content for m in call.session.history.messages() if m.role == "assistant"][-1]
            assert said == f"Transfer result: {NO_PHONE_LINE}"
        finally:
            await call.session.aclose()
            await call.finish()
    [record] = call.outcome().tool_calls
    assert (record.name, record.tool_type, record.status) == ("escalate", "call_transfer", "unavailable")
    assert call.end_reason != "transferred"


async def test_a_web_caller_in_a_team_call_goes_to_the_named_member(catalog_dir: Path):
    catalog = load_catalog(catalog_dir)
    team = catalog.teams[TEAM]
    fake = FakeLLM(asks_for_a_person)
    platform_tools = CallTools(catalog.tools, ToolConfig(), transfer_line=TransferLine(on_end=lambda _: None))
    supervision = Supervision()
    team_call = TeamCall(
        team=team,
        agents=catalog.agents,
        system_values={"session_id": str(uuid.uuid4()), "team_id": str(team.id)},
        on_end=lambda _: None,
        router_models=lambda _entry: fake,
        supervision=supervision,
        platform_tools=platform_tools,
    )
    session: AgentSession[None] = AgentSession(llm=fake)
    await session.start(team_call.initial_agent())
    try:
        await session.run(user_input="Can I talk to a human?")
        for _ in range(200):
            if isinstance(session.current_agent, CallAgent) and session.current_agent.id == "sales":
                break
            await asyncio.sleep(0.01)
        assert session.current_agent.id == "sales"
        assert [(c.from_member_id, c.to_member_id) for c in supervision.member_changes] == [
            (team.initial_member_id, next(m.id for m in team.members if m.router_name == "sales"))
        ]
        assert supervision.member_changes[0].reason == "wants a person"
    finally:
        await session.aclose()
        await platform_tools.aclose()
    assert [(r.name, r.status) for r in platform_tools.records] == [("escalate", "handed_off")]
