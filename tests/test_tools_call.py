"""Platform tools inside a call (text mode, the real bootstrap): the scripted model calls order_lookup, the tool
reaches a local HTTP server, the model speaks the mapped result, the output binding shows in the next turn's
instructions, a slow lookup gets the filler line, and the session record lists the run without any secret."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from livekit.agents import llm
from livekit.agents.testing import fake_job_context

from calls.bootstrap import start_call
from calls.call import CallServices
from catalog.loader import CatalogStore
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.tool_api import ToolApi
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
TOKEN = "acme-orders-token-5e1f0c77"
ORDER = {
    "data": {
        "order": {
            "status": "shipped",
            "shipments": [{"carrier": "UPS", "tracking_number": "1Z999"}],
            "estimated_delivery": "2026-12-04",
            "customer_email": "dana@example.com",
        }
    }
}


@pytest.fixture
async def api():
    async with ToolApi() as server:
        yield server


@pytest.fixture
def catalog_dir(tmp_path: Path, api: ToolApi) -> Path:
    """The example catalog with the order service at the local test server."""
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target)
    tool = target / "tools" / "order-lookup.yaml"
    tool.write_text(tool.read_text().replace("https://orders.acme.example", api.base))
    return target


def make_settings(catalog_dir: Path, **extra: Any) -> Settings:
    return Settings(
        _env_file=None,
        VOICE_WORKER_MODE="dev",  # dev mode: loopback (the test server) is reachable
        OPENAI_API_KEY="sk-test-not-real",
        DEEPGRAM_API_KEY="dg-test-not-real",
        CATALOG_PATH=str(catalog_dir),
        **extra,
    )


def metadata(settings: Settings, **seeds: Any) -> str:
    return mint_dispatch_metadata(
        DispatchRequest(session_id=uuid.uuid4(), session_type="test", agent_id=SUPPORT, context_variables=seeds),
        secret=settings.signing_secret(),
        issuer=settings.dispatch_issuer,
    )


def tool_output_since_last_user(chat_ctx: llm.ChatContext) -> llm.FunctionCallOutput | None:
    found = None
    for item in chat_ctx.items:
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            found = None
        elif isinstance(item, llm.FunctionCallOutput):
            found = item
    return found


def order_script(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
    """A model that looks the order up when asked, then reads the tool's answer back."""
    output = tool_output_since_last_user(chat_ctx)
    if output is not None:
        answer = json.loads(output.output)
        if "error" in answer:
            return Reply(text="I could not find that order.")
        return Reply(text=f"Your order is {answer['order_status']}, with {answer['carrier']}.")
    last_user = next((m.text_content for m in reversed(chat_ctx.messages()) if m.role == "user"), "") or ""
    if "order" in last_user.lower() and any(t.id == "order_lookup" for t in tools):
        return Reply(tool_calls=[("order_lookup", {"order_number": "1042"})])
    return Reply(text="You're welcome.")


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def assistant_texts(history: llm.ChatContext) -> list[str]:
    return [m.text_content or "" for m in history.messages() if m.role == "assistant"]


async def test_the_model_calls_the_tool_and_speaks_its_result(api: ToolApi, catalog_dir: Path, monkeypatch):
    monkeypatch.setenv("TOOL_ACME_ORDERS_TOKEN", TOKEN)
    api.answer("/v1/orders/1042", lambda _: web.json_response(ORDER))
    settings = make_settings(catalog_dir)
    fake = FakeLLM(order_script)
    services = CallServices(
        settings=settings, catalog=CatalogStore(catalog_dir), session_kwargs=lambda _: {"llm": fake}
    )
    with fake_job_context(job_metadata=metadata(settings, customer_name="Dana", tier="gold")) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            await wait_for(lambda: assistant_texts(call.session.history))
            result = await call.session.run(user_input="Where is my order? It's 1042.")
            result.expect.next_event().is_function_call(name="order_lookup", arguments={"order_number": "1042"})
            result.expect.next_event().is_function_call_output()
            result.expect.next_event().is_message(role="assistant")
            assert assistant_texts(call.session.history)[-1] == "Your order is shipped, with UPS."

            # what went over the wire: the path, the secret from the environment, a context variable
            arrived = api.hits("/v1/orders/1042")
            assert len(arrived) == 1
            assert arrived[0].headers["Authorization"] == f"Bearer {TOKEN}"
            assert arrived[0].headers["X-Acme-Tier"] == "gold"
            assert arrived[0].query == {"fields": "status,shipments,estimated_delivery"}
            # the model read only the mapped fields
            output = next(i for i in call.session.history.items if isinstance(i, llm.FunctionCallOutput))
            assert json.loads(output.output) == {
                "order_status": "shipped",
                "carrier": "UPS",
                "tracking_number": "1Z999",
                "estimated_delivery": "2026-12-04",
            }

            # output binding: order_status is a context variable now, and the next turn's instructions say so
            assert call.variables.values["order_status"] == "shipped"
            await call.session.run(user_input="Thanks!")
            next_turn = [c for c in fake.calls if c.last_user_text == "Thanks!"]
            assert next_turn and "The order looked up last is shipped." in (next_turn[-1].instructions or "")
        finally:
            await call.session.aclose()
            await call.finish()
    outcome = call.outcome()
    assert [(t.name, t.status, t.http_status, t.attempts) for t in outcome.tool_calls] == [
        ("order_lookup", "ok", 200, 1)
    ]
    record = outcome.tool_calls[0]
    assert record.started_at <= record.ended_at and record.duration_ms > 0
    everything = outcome.model_dump_json() + json.dumps([c.instructions for c in fake.calls])
    assert TOKEN not in everything and TOKEN not in str(call.session.history.to_dict())


async def test_a_slow_tool_gets_the_filler_line(api: ToolApi, catalog_dir: Path, monkeypatch):
    monkeypatch.setenv("TOOL_ACME_ORDERS_TOKEN", TOKEN)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response(ORDER)

    api.answer("/v1/orders/1042", slow)
    settings = make_settings(catalog_dir, TOOL_FILLER_AFTER_MS=200)
    fake = FakeLLM(order_script)
    services = CallServices(
        settings=settings, catalog=CatalogStore(catalog_dir), session_kwargs=lambda _: {"llm": fake}
    )
    with fake_job_context(job_metadata=metadata(settings)) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            await wait_for(lambda: assistant_texts(call.session.history))
            await call.session.run(user_input="Where is my order 1042?")
            texts = assistant_texts(call.session.history)
            # the tool's own filler_text, said while it ran, before the answer
            assert texts[-2:] == ["Let me pull up that order.", "Your order is shipped, with UPS."], texts
        finally:
            await call.session.aclose()
            await call.finish()


async def test_a_quick_tool_gets_no_filler_and_a_failed_lookup_is_an_answer(
    api: ToolApi, catalog_dir: Path, monkeypatch
):
    monkeypatch.setenv("TOOL_ACME_ORDERS_TOKEN", TOKEN)
    api.answer("/v1/orders/1042", lambda _: web.json_response({"error": "no such order"}, status=404))
    settings = make_settings(catalog_dir, TOOL_FILLER_AFTER_MS=500)
    fake = FakeLLM(order_script)
    services = CallServices(
        settings=settings, catalog=CatalogStore(catalog_dir), session_kwargs=lambda _: {"llm": fake}
    )
    with fake_job_context(job_metadata=metadata(settings)) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            await wait_for(lambda: assistant_texts(call.session.history))
            await call.session.run(user_input="Where is my order 1042?")
            texts = assistant_texts(call.session.history)
            assert texts[-1] == "I could not find that order." and "Let me pull up that order." not in texts
            assert call.variables.values["order_status"] is None
        finally:
            await call.session.aclose()
            await call.finish()
    [record] = call.outcome().tool_calls
    assert (record.status, record.http_status, record.error) == (
        "http_error",
        404,
        "the service answered 404 Not Found",
    )


async def test_without_the_secret_the_tool_is_refused_and_nothing_is_sent(api: ToolApi, catalog_dir: Path, monkeypatch):
    monkeypatch.delenv("TOOL_ACME_ORDERS_TOKEN", raising=False)
    settings = make_settings(catalog_dir)
    fake = FakeLLM(order_script)
    services = CallServices(
        settings=settings, catalog=CatalogStore(catalog_dir), session_kwargs=lambda _: {"llm": fake}
    )
    with fake_job_context(job_metadata=metadata(settings)) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            await wait_for(lambda: assistant_texts(call.session.history))
            await call.session.run(user_input="Where is my order 1042?")
        finally:
            await call.session.aclose()
            await call.finish()
    assert api.requests == []
    [record] = call.outcome().tool_calls
    assert record.status == "refused" and "TOOL_ACME_ORDERS_TOKEN is not set" in record.error


async def test_the_stored_session_record_lists_the_tool_calls(
    api: ToolApi, catalog_dir: Path, tmp_path: Path, monkeypatch
):
    from records import migrate
    from records.store import SessionStore

    monkeypatch.setenv("TOOL_ACME_ORDERS_TOKEN", TOKEN)
    api.answer("/v1/orders/1042", lambda _: web.json_response(ORDER))
    settings = make_settings(catalog_dir)
    fake = FakeLLM(order_script)
    services = CallServices(
        settings=settings, catalog=CatalogStore(catalog_dir), session_kwargs=lambda _: {"llm": fake}
    )
    with fake_job_context(job_metadata=metadata(settings)) as ctx:
        call = await start_call(ctx, services, room=None)
        try:
            await call.session.run(user_input="Where is my order 1042?")
        finally:
            await call.session.aclose()
            await call.finish()
    url = f"sqlite:///{tmp_path}/records.db"
    await asyncio.to_thread(migrate.upgrade, url)
    store = SessionStore(url)
    try:
        outcome = call.outcome()
        await store.complete(outcome)
        record = await store.get(outcome.session_id)
    finally:
        await store.aclose()
    assert record is not None and record.tool_calls == outcome.tool_calls
    assert [(t.name, t.status) for t in record.tool_calls] == [("order_lookup", "ok")]
    assert TOKEN not in record.model_dump_json()
