"""A call through the real bootstrap (`start_call`) in text mode: greeting with a seeded variable, LLM reply."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from livekit.agents import llm
from livekit.agents.testing import fake_job_context

from calls.bootstrap import start_call
from calls.call import CallServices
from catalog.loader import CatalogStore
from contract.dispatch import DispatchRejected, DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from tests.doubles.fake_llm import FakeLLM, Reply
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None, VOICE_WORKER_MODE="dev", OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY="dg-test-not-real"
    )


def metadata(settings: Settings, **kw) -> str:
    return mint_dispatch_metadata(
        DispatchRequest(
            session_id=kw.pop("session_id", uuid.uuid4()),
            session_type=kw.pop("session_type", "test"),
            agent_id=kw.pop("agent_id", SUPPORT),
            context_variables=kw.pop("context_variables", None),
        ),
        secret=settings.signing_secret(),
        issuer=settings.dispatch_issuer,
    )


def replies(text: str, procedure: str = "refund_request"):
    """A FakeLLM script: router requests (one enum tool, choose_procedure) pick `procedure`; replies say `text`."""

    def script(chat_ctx, tools):
        if tools and getattr(tools[0], "id", None) == "choose_procedure":
            return Reply(tool_calls=[("choose_procedure", {"name": procedure})])
        return Reply(text=text)

    return script


def reply_calls(fake: FakeLLM):
    return [c for c in fake.calls if "choose_procedure" not in c.tool_names]


def assistant_texts(history: llm.ChatContext) -> list[str]:
    return [m.text_content or "" for m in history.messages() if m.role == "assistant"]


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_greeting_carries_the_seed_and_the_reply_comes_from_the_llm(settings: Settings):
    fake = FakeLLM(replies("Sure Dana, what is the order number?"))
    services = CallServices(
        settings=settings, catalog=CatalogStore(EXAMPLE_CATALOG), session_kwargs=lambda _: {"llm": fake}
    )
    session_id = uuid.uuid4()
    seeds = {"customer_name": "Dana", "tier": "GOLD", "order_count": "3"}
    with fake_job_context(job_metadata=metadata(settings, session_id=session_id, context_variables=seeds)) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            await wait_for(lambda: assistant_texts(call.session.history))
            assert (
                assistant_texts(call.session.history)[0] == "Hi Dana, thanks for calling Acme support. How can I help?"
            )

            result = await call.session.run(user_input="I want to return a blender")
            result.expect.next_event().is_message(role="assistant")
            assert assistant_texts(call.session.history)[-1] == "Sure Dana, what is the order number?"

            # The LLM saw the revision's system prompt rendered with the coerced seeds and the caller's words.
            seen = next(c for c in reply_calls(fake) if "Handle a refund" in (c.instructions or ""))
            assert "The caller is Dana (gold tier)" in (seen.instructions or "")
            assert "placed 3 orders" in (seen.instructions or "")
            assert seen.last_user_text == "I want to return a blender"
            assert call.variables.values["order_count"] == 3
            assert call.variables.system["session_id"] == str(session_id)
        finally:
            await call.session.aclose()
    assert call.end_reason is not None and call.state.ended_at is not None


async def test_unset_seeds_fall_back_to_the_revision_defaults(settings: Settings):
    fake = FakeLLM()
    services = CallServices(
        settings=settings, catalog=CatalogStore(EXAMPLE_CATALOG), session_kwargs=lambda _: {"llm": fake}
    )
    with fake_job_context(job_metadata=metadata(settings)) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            await wait_for(lambda: assistant_texts(call.session.history))
            assert assistant_texts(call.session.history)[0].startswith("Hi there, thanks for calling")
            await call.session.run(user_input="hello")
            assert assistant_texts(call.session.history)[-1] == "You said: hello"
        finally:
            await call.session.aclose()


async def test_entrypoint_verifies_again(settings: Settings):
    services = CallServices(
        settings=settings, catalog=CatalogStore(EXAMPLE_CATALOG), session_kwargs=lambda _: {"llm": FakeLLM()}
    )
    with (
        fake_job_context(job_metadata=metadata(settings, agent_id=uuid.uuid4())) as ctx,
        pytest.raises(DispatchRejected) as info,
    ):
        await start_call(ctx, services, room=None)
    assert info.value.reason == "unknown_agent"
