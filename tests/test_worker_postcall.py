"""A call's end through the worker: the record is completed, live calls are summarised and remembered,
test calls are not (no model call at all), and the next live call of the same caller starts with the memory."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from livekit.agents.testing import fake_job_context

from calls.bootstrap import start_call
from calls.call import CallServices
from catalog.loader import CatalogStore
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from postcall.memory import LLMMemoryExtractor
from postcall.processor import PostCallProcessor
from records.migrate import upgrade
from records.store import SessionStore
from tests.doubles.fake_llm import FakeLLM, Reply
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")


def call_llm(chat_ctx, tools):
    if tools and getattr(tools[0], "id", None) == "choose_procedure":
        return Reply(tool_calls=[("choose_procedure", {"name": "refund_request"})])
    return Reply(text="Happy to help with that.")


class PostcallModels:
    """Counting double for the summary model and the memory writer."""

    def __init__(self) -> None:
        self.made: list[FakeLLM] = []

    def __call__(self, outcome):
        def script(chat_ctx, tools):
            if tools and getattr(tools[0], "id", None) == "save_caller_facts":
                return Reply(tool_calls=[("save_caller_facts", {"facts": ["Returned a blender in March"]})])
            return Reply(text="The caller returned a blender; refund explained.")

        model = FakeLLM(script)
        self.made.append(model)
        return model

    @property
    def requests(self) -> int:
        return sum(len(m.calls) for m in self.made)


@pytest.fixture
async def store(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/records.db"
    upgrade(url)
    store = SessionStore(url)
    yield store
    await store.aclose()


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, VOICE_WORKER_MODE="dev", OPENAI_API_KEY="sk-test", DEEPGRAM_API_KEY="dg-test")


async def run_call(settings, store, models, *, session_type: str, end_user_id: str | None, utterances: list[str]):
    services = CallServices(
        settings=settings,
        catalog=CatalogStore(EXAMPLE_CATALOG),
        session_kwargs=lambda _: {"llm": FakeLLM(call_llm)},
        store=store,
    )
    processor = PostCallProcessor(store, settings, models, LLMMemoryExtractor(models))
    session_id = uuid.uuid4()
    metadata = mint_dispatch_metadata(
        DispatchRequest(session_id=session_id, session_type=session_type, agent_id=SUPPORT, end_user_id=end_user_id),
        secret=settings.signing_secret(),
        issuer=settings.dispatch_issuer,
    )
    with fake_job_context(job_metadata=metadata) as ctx:
        call = await start_call(ctx, services, room=None)
        for text in utterances:
            await call.session.run(user_input=text)
        await call.finish(reason="participant_left")
        record = await processor.process(call.outcome())
    return call, record


async def test_live_call_is_summarised_remembered_and_recalled(settings, store):
    models = PostcallModels()
    _call, record = await run_call(
        settings,
        store,
        models,
        session_type="live",
        end_user_id="user-42",
        utterances=["I want to return my blender", "It arrived broken"],
    )
    assert record is not None
    assert record.status == "ended" and record.end_reason == "participant_left"
    assert record.summary == "The caller returned a blender; refund explained."
    assert record.memory_state == "synced"
    assert record.procedure is not None and record.procedure.name == "refund_request"
    assert [t.text for t in record.transcript if t.role == "user"] == [
        "I want to return my blender",
        "It arrived broken",
    ]
    assert record.revision_id == uuid.UUID("7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e02")
    assert await store.facts_for("user-42") == ["Returned a blender in March"]

    # The next live call of the same caller starts with what we know.
    second, _ = await run_call(
        settings, store, PostcallModels(), session_type="live", end_user_id="user-42", utterances=["hi"]
    )
    system_texts = [m.text_content or "" for m in second.session.history.messages() if m.role == "system"]
    agent_system = [m.text_content or "" for m in second.agent.chat_ctx.messages() if m.role == "system"]
    assert any("Returned a blender in March" in t for t in system_texts + agent_system)


async def test_test_session_calls_no_model_and_leaves_memory_alone(settings, store):
    models = PostcallModels()
    await run_call(
        settings, store, models, session_type="live", end_user_id="user-7", utterances=["refund please", "thanks"]
    )
    before = await store.memory_facts("user-7")
    models = PostcallModels()
    call, record = await run_call(
        settings, store, models, session_type="test", end_user_id="user-7", utterances=["refund please", "thanks"]
    )
    assert models.requests == 0 and models.made == []
    assert record.summary_state == "suppressed" and record.memory_state == "suppressed"
    assert len(record.transcript) >= 3  # greeting + two user turns (+ replies): the transcript is still kept
    assert await store.memory_facts("user-7") == before
    # A test call does not read memory either: it behaves like a first call.
    assert not any("earlier calls" in (m.text_content or "") for m in call.agent.chat_ctx.messages())
