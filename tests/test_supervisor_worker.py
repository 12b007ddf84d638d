"""The supervisor through the real worker bootstrap (`start_call`): the router is the call's own LLM
(the example catalog sets no `router_model_settings`), the choice and member changes land on
`call.supervision` in the session record's shapes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from livekit.agents import llm
from livekit.agents.testing import fake_job_context

from calls.bootstrap import start_call
from calls.call import CallServices
from catalog.loader import CatalogStore
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from procedures.agent import CallAgent
from records.outcome import MemberChange, ProcedureChoice
from tests.doubles.fake_llm import FakeLLM, Reply
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
TEAM = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")
SALES_MEMBER = uuid.UUID("4b0a9f8e-7d6c-4b5a-8f4e-3d2c1b0a9f02")
SUPPORT_MEMBER = uuid.UUID("4b0a9f8e-7d6c-4b5a-8f4e-3d2c1b0a9f01")


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, VOICE_WORKER_MODE="dev", OPENAI_API_KEY="sk-test", DEEPGRAM_API_KEY="dg-test")


def metadata(settings: Settings, **target) -> str:
    return mint_dispatch_metadata(
        DispatchRequest(session_id=uuid.uuid4(), session_type="test", **target),
        secret=settings.signing_secret(),
        issuer=settings.dispatch_issuer,
    )


def one_model(routes: dict[str, str], replies: Callable[[str], str]) -> tuple[FakeLLM, dict[str, list[list[str]]]]:
    """The call's single LLM double: router requests (one `choose_*` tool) get `routes[tool]`, every other
    request gets `replies(system prompt)`. Also returns the enums each router tool was offered."""
    offered: dict[str, list[list[str]]] = {}

    def script(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
        if len(tools) == 1 and tools[0].id.startswith("choose_"):
            enum = tools[0].info.raw_schema["parameters"]["properties"]["name"]["enum"]
            offered.setdefault(tools[0].id, []).append(enum)
            return Reply(tool_calls=[(tools[0].id, {"name": routes.get(tools[0].id, "none")})])
        system = "\n".join(m.text_content or "" for m in chat_ctx.messages() if m.role == "system")
        return Reply(text=replies(system))

    return FakeLLM(script), offered


def assistant_texts(history: llm.ChatContext) -> list[str]:
    return [m.text_content or "" for m in history.messages() if m.role == "assistant"]


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_agent_call_records_the_procedure_choice(settings: Settings):
    fake, offered = one_model(
        {"choose_procedure": "refund_request"},
        lambda system: "Refund it is." if "Handle a refund" in system else "Hello from the default prompt.",
    )
    services = CallServices(settings, CatalogStore(EXAMPLE_CATALOG), session_kwargs=lambda _cfg: {"llm": fake})
    with fake_job_context(job_metadata=metadata(settings, agent_id=SUPPORT)) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            assert call.agent.supervisor is not None
            await wait_for(lambda: assistant_texts(call.session.history) != [])  # the static greeting
            await call.session.run(user_input="I want to return a blender")
            assert assistant_texts(call.session.history)[-1] == "Refund it is."
            await wait_for(lambda: call.supervision.procedure is not None)
            await call.session.run(user_input="It arrived broken")
            assert assistant_texts(call.session.history)[-1] == "Refund it is."
        finally:
            await call.session.aclose()

    assert offered == {"choose_procedure": [["refund_request", "none"]]}
    choice = call.supervision.procedure_choice()
    assert isinstance(choice, ProcedureChoice)
    assert choice.name == "refund_request" and choice.reason == "router"
    assert choice.router_latency_ms is not None
    assert call.supervision.member_changes == []


async def test_team_call_greets_with_the_initial_member_and_moves_to_sales(settings: Settings):
    fake, offered = one_model(
        {"choose_team_member": "sales", "choose_procedure": "pricing_question"},
        lambda system: "Sales here." if "sales assistant" in system else "Support here.",
    )
    services = CallServices(settings, CatalogStore(EXAMPLE_CATALOG), session_kwargs=lambda _cfg: {"llm": fake})
    with fake_job_context(job_metadata=metadata(settings, team_id=TEAM)) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            assert isinstance(call.session.current_agent, CallAgent)
            assert call.session.current_agent.id == "support"
            await wait_for(lambda: assistant_texts(call.session.history) != [])
            assert assistant_texts(call.session.history) == ["Hi, you've reached Acme. How can I help?"]

            await call.session.run(user_input="How much is the Pro plan?")
            await wait_for(lambda: assistant_texts(call.session.history)[-1] == "Sales here.")
            assert call.session.current_agent.id == "sales"
        finally:
            await call.session.aclose()

    assert offered["choose_team_member"] == [["support", "sales", "none"]]
    # support's own procedure router ran alongside (turn 1 is not delayed by the team router); then sales's
    assert offered["choose_procedure"] == [["refund_request", "none"], ["pricing_question", "none"]]
    [change] = call.supervision.member_changes
    assert isinstance(change, MemberChange)
    assert (change.from_member_id, change.to_member_id, change.reason) == (SUPPORT_MEMBER, SALES_MEMBER, "team_router")
    choice = call.supervision.procedure_choice()
    assert isinstance(choice, ProcedureChoice)
    assert choice.name == "pricing_question"
