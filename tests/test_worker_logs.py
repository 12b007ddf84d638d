"""Every log record of a call carries session_id, agent_id and job_id, in the production JSON format, and no
record carries a secret.

The call runs on the production process services (`build_process_services`: real provider plugins, store,
post-call processor, webhook delivery) with known secret values in the settings; its LLM chain points at the
OpenAI protocol double, so the real OpenAI plugin sends the real key. The call is a live one, so post-call runs
its summary and memory models too. Records are captured at DEBUG from every logger, stricter than production
(which keeps noisy libraries at WARNING). The filter is installed the way `setup_process` installs it.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.agents.cli.log import JsonFormatter
from livekit.agents.testing import fake_job_context

from calls.bootstrap import start_call
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from records.migrate import upgrade
from telemetry import logcontext
from tests.doubles.openai_server import OpenAIServerDouble, Reply, ToolCall
from tests.doubles.webhook_receiver import WebhookReceiver
from worker.server import after_call
from worker.services import build_process_services
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
SECRETS = {
    "LIVEKIT_API_KEY": "APIlogs4Rt8vWq",
    "LIVEKIT_API_SECRET": "lk-logs-secret-1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d",
    "DISPATCH_SIGNING_SECRET": "dispatch-logs-signing-9z8y7x6w5v4u3t2s1r0q9p8o7n6m",
    "OPENAI_API_KEY": "sk-logs-4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c",
    "DEEPGRAM_API_KEY": "dg-logs-0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f",
    "OPENAI_COMPATIBLE_API_KEY": "oc-logs-5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a",
    "POSTCALL_WEBHOOK_SECRET": "whsec-logs-8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b",
}


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture() -> Iterator[Capture]:
    root = logging.getLogger()
    handler = Capture()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logcontext.install()  # what setup_process does in each job process
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
async def oai() -> AsyncIterator[OpenAIServerDouble]:
    async with OpenAIServerDouble() as server:

        def answer(body: dict[str, Any]) -> Reply:
            tools = [t.get("function", {}).get("name") for t in body.get("tools") or []]
            if "choose_procedure" in tools:
                return Reply(tool_calls=[ToolCall("choose_procedure", {"name": "refund_request"})])
            if "save_caller_facts" in tools:
                return Reply(tool_calls=[ToolCall("save_caller_facts", {"facts": ["Returns a blender"]})])
            return Reply(text="Happy to help with that.")

        server.set_chat_responder(answer)
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver(secret=SECRETS["POSTCALL_WEBHOOK_SECRET"])
    await hooks.start()
    yield hooks
    await hooks.stop()


@pytest.fixture
def settings(tmp_path: Path, oai: OpenAIServerDouble, receiver: WebhookReceiver) -> Settings:
    catalog = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, catalog)
    support = catalog / "support.yaml"
    text = support.read_text()
    for model in ("gpt-4.1-mini", "gpt-4o-mini"):
        entry = f"{{provider: openai, model: {model}, "
        text = text.replace(entry, f"{entry}base_url: '{oai.base_url}', ")
    assert text.count(oai.base_url) == 2
    support.write_text(text)
    database_url = f"sqlite:///{tmp_path}/records.db"
    upgrade(database_url)
    settings = Settings(
        _env_file=None,
        VOICE_WORKER_MODE="production",
        CATALOG_PATH=str(catalog),
        DATABASE_URL=database_url,
        POSTCALL_WEBHOOK_URL=receiver.url,
        **SECRETS,
    )
    settings.require_production_secrets()
    return settings


async def test_every_record_of_a_call_carries_its_ids_and_no_secret(
    settings: Settings, oai: OpenAIServerDouble, receiver: WebhookReceiver, capture: Capture
):
    services = build_process_services(settings)
    session_id = uuid.uuid4()
    metadata = mint_dispatch_metadata(
        DispatchRequest(session_id=session_id, session_type="live", agent_id=SUPPORT, end_user_id="user-logs"),
        secret=SECRETS["DISPATCH_SIGNING_SECRET"],
        issuer=settings.dispatch_issuer,
    )
    try:
        with fake_job_context(job_metadata=metadata) as ctx:
            first = len(capture.records)
            call = await start_call(ctx, services, room=None)
            await call.session.run(user_input="I want to return my blender, it arrived broken")
            call.state.end("participant_left")
            await after_call(call, services)
            of_the_call = capture.records[first:]
            job_id = ctx.job.id
    finally:
        if services.delivery is not None:
            await services.delivery.aclose()
        if services.store is not None:
            await services.store.aclose()

    # the call really ran through the providers and post-call
    assert len(oai.chat_requests) >= 3  # router, reply, summary (+ memory)
    assert len(receiver.accepted) == 1
    assert len(of_the_call) >= 5

    formatter = JsonFormatter()
    ids = {"session_id": str(session_id), "agent_id": str(SUPPORT), "job_id": job_id}
    for record in of_the_call:
        line = json.loads(formatter.format(record))
        assert {k: line.get(k) for k in ids} == ids, f"{record.name}: {record.getMessage()}"

    every_record = [formatter.format(r) + repr(vars(r)) for r in capture.records]
    for name, secret in SECRETS.items():
        assert not any(secret in text for text in every_record), f"{name} reached a log record"
