"""PostCallProcessor against real databases, with scripted model doubles that count every call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from livekit.agents import llm
from livekit.agents._exceptions import APIStatusError

from contract.session_type import SessionType
from postcall.memory import TOOL_NAME, LLMMemoryExtractor
from postcall.processor import PostCallProcessor
from records import migrate
from records.outcome import MemoryState, SessionOutcome, SummaryState, TranscriptItem
from records.store import SessionStore
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.postgres import database_url, postgres_server, postgres_url  # noqa: F401 - pytest fixtures
from tests.ports import free_port
from worker.settings import Settings

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
AGENT = uuid.UUID("11111111-1111-4111-8111-111111111111")
USER = "end-user-7"
TRANSCRIPT = [
    TranscriptItem(role="assistant", text="Hello, this is Acme support.", created_at=T0),
    TranscriptItem(role="user", text="Hi, I'm Dana. My kettle broke.", created_at=T0 + timedelta(seconds=3)),
    TranscriptItem(role="assistant", text="Sorry to hear that. Which model?", created_at=T0 + timedelta(seconds=6)),
    TranscriptItem(role="user", text="The K2. Please email me, not SMS.", created_at=T0 + timedelta(seconds=9)),
]


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "VOICE_WORKER_MODE": "dev",
        "POSTCALL_STEP_TIMEOUT_S": 5.0,
        "POSTCALL_WEBHOOK_URL": "http://127.0.0.1:9/hooks",
        "POSTCALL_WEBHOOK_SECRET": "whsec-test-0123456789",
        "MEMORY_FACT_CAP": 10,
        "MEMORY_MIN_USER_TURNS": 2,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]  # env-style names with mixed value types


def make_outcome(**overrides: object) -> SessionOutcome:
    values: dict[str, object] = {
        "session_id": uuid.uuid4(),
        "session_type": "live",
        "agent_id": AGENT,
        "revision_id": uuid.uuid4(),
        "end_user_id": USER,
        "started_at": T0,
        "ended_at": T0 + timedelta(seconds=30),
        "end_reason": "participant_left",
        "transcript": TRANSCRIPT,
        "usage": {"llm_prompt_tokens": 10},
        "summary_instructions": "Summarise the call in one sentence for the support team.",
    }
    values.update(overrides)
    return SessionOutcome.model_validate(values)


class CountingFactory:
    """An `llm.LLM` factory: the n-th model made plays `replies[n]` (the last one once they run out)."""

    def __init__(self, replies: Sequence[Reply | str]) -> None:
        self.replies = list(replies)
        self.made: list[FakeLLM] = []

    def __call__(self, outcome: SessionOutcome) -> llm.LLM:
        model = FakeLLM([self.replies[min(len(self.made), len(self.replies) - 1)]])
        self.made.append(model)
        return model

    @property
    def model_calls(self) -> int:
        return sum(len(m.calls) for m in self.made)


class CountingExtractor:
    def __init__(self, facts: list[str]) -> None:
        self.facts = facts
        self.calls = 0

    async def extract(self, outcome: SessionOutcome, known_facts: Sequence[str]) -> list[str]:
        self.calls += 1
        return self.facts


def facts_reply(*facts: str) -> Reply:
    return Reply(tool_calls=[(TOOL_NAME, {"facts": list(facts)})])


async def _open_store(url: str) -> SessionStore:
    await asyncio.to_thread(migrate.upgrade, url)
    return SessionStore(url, retention_days=30)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SessionStore]:  # noqa: F811 - the fixture imported above
    s = await _open_store(database_url)
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    s = await _open_store(f"sqlite:///{tmp_path / 'records.db'}")
    try:
        yield s
    finally:
        await s.aclose()


async def test_live_call_memory_is_available_to_the_next_live_call_of_the_same_end_user(
    store: SessionStore,
) -> None:
    summaries = CountingFactory(["Dana reported a broken K2 kettle and prefers email."])
    extraction = CountingFactory(
        [
            facts_reply("The caller's name is Dana.", "The caller prefers email over SMS."),
            facts_reply("The caller owns a K2 kettle.", "the caller prefers EMAIL over sms."),
        ]
    )
    enqueued: list[int] = []
    processor = PostCallProcessor(
        store,
        make_settings(),
        summaries,
        LLMMemoryExtractor(extraction),
        on_enqueued=lambda: enqueued.append(1),
    )

    first = make_outcome()
    record = await processor.process(first)
    assert record is not None
    assert record.summary == "Dana reported a broken K2 kettle and prefers email."
    assert record.summary_state is SummaryState.COMPLETED
    assert record.memory_state is MemoryState.SYNCED
    assert record.postcall_error is None
    assert summaries.made[0].calls[0].instructions == first.summary_instructions
    assert "Caller: Hi, I'm Dana. My kettle broke." in summaries.made[0].calls[0].last_user_text

    # what the next call's agent is told at bootstrap
    assert await store.facts_for(USER) == ["The caller's name is Dana.", "The caller prefers email over SMS."]

    second = make_outcome()
    record2 = await processor.process(second)
    assert record2 is not None and record2.memory_state is MemoryState.SYNCED
    second_prompt = extraction.made[1].calls[0].last_user_text or ""
    assert "- The caller's name is Dana." in second_prompt and "- The caller prefers email over SMS." in second_prompt
    assert extraction.made[1].calls[0].tool_names == (TOOL_NAME,)
    facts = await store.facts_for(USER)
    assert sorted(facts) == sorted(
        ["The caller's name is Dana.", "the caller prefers EMAIL over sms.", "The caller owns a K2 kettle."]
    )

    entry = await store.outbox_entry(second.session_id)
    assert entry is not None and entry.delivered_at is None
    assert entry.payload["event"] == "session.completed"
    assert entry.payload["session"]["summary_state"] == "completed"
    assert entry.payload["session"]["transcript"][1]["text"] == "Hi, I'm Dana. My kettle broke."
    assert enqueued == [1, 1]


async def test_test_session_calls_no_model_nor_memory_writer_and_leaves_memory_unchanged(
    store: SessionStore,
) -> None:
    seeding = PostCallProcessor(store, make_settings(), None, CountingExtractor(["The caller's name is Dana."]))
    assert (await seeding.process(make_outcome())) is not None
    memory_before = await store.memory_facts(USER)
    assert [f.fact for f in memory_before] == ["The caller's name is Dana."]

    summaries = CountingFactory(["must not be used"])
    extraction = CountingFactory([facts_reply("The caller is secretly a test.")])
    extractor = CountingExtractor(["The caller is secretly a test."])
    test_call = make_outcome(session_type="test")
    await store.create_session(test_call.session_id, "test", agent_id=AGENT)  # the door's row

    for memory_extractor in (extractor, LLMMemoryExtractor(extraction)):
        record = await PostCallProcessor(store, make_settings(), summaries, memory_extractor).process(test_call)
        assert record is not None
        assert record.session_type is SessionType.TEST
        assert record.summary is None
        assert (record.summary_state, record.memory_state) == (
            SummaryState.SUPPRESSED,
            MemoryState.SUPPRESSED,
        )
        assert record.transcript == test_call.transcript

    assert summaries.made == [] and extraction.made == [] and extractor.calls == 0
    assert await store.memory_facts(USER) == memory_before
    entry = await store.outbox_entry(test_call.session_id)
    assert entry is not None and entry.payload["session"]["memory_state"] == "suppressed"


async def test_a_simulation_session_is_recorded_as_one_without_a_model_call(sqlite_store: SessionStore) -> None:
    summaries, extractor = CountingFactory(["nope"]), CountingExtractor(["nope"])
    outcome = make_outcome(session_type="simulation")  # `voice-worker simulate`: no door row, the worker's own
    record = await PostCallProcessor(sqlite_store, make_settings(), summaries, extractor).process(outcome)
    assert record is not None and record.session_type is SessionType.SIMULATION
    assert (record.summary_state, record.memory_state) == (SummaryState.SUPPRESSED, MemoryState.SUPPRESSED)
    assert summaries.made == [] and extractor.calls == 0
    assert await sqlite_store.facts_for(USER) == []


async def test_a_worker_claiming_live_for_a_door_test_session_still_gets_no_model_call(
    sqlite_store: SessionStore,
) -> None:
    summaries, extractor = CountingFactory(["nope"]), CountingExtractor(["nope"])
    outcome = make_outcome(session_type="live")
    await sqlite_store.create_session(outcome.session_id, "test", agent_id=AGENT)
    record = await PostCallProcessor(sqlite_store, make_settings(), summaries, extractor).process(outcome)
    assert record is not None and record.memory_state is MemoryState.SUPPRESSED
    assert summaries.made == [] and extractor.calls == 0
    assert await sqlite_store.facts_for(USER) == []


async def test_model_error_and_timeout_leave_a_record_with_the_error_and_the_transcript(
    store: SessionStore,
) -> None:
    failing_summary = CountingFactory(
        [Reply(error=APIStatusError("model overloaded", status_code=500, retryable=False))]
    )
    slow_extraction = CountingFactory([Reply(tool_calls=[(TOOL_NAME, {"facts": ["late"]})], ttft_s=30.0)])
    processor = PostCallProcessor(
        store,
        make_settings(POSTCALL_STEP_TIMEOUT_S=0.3),
        failing_summary,
        LLMMemoryExtractor(slow_extraction),
    )
    outcome = make_outcome()
    record = await processor.process(outcome)

    assert record is not None
    stored = await store.get(outcome.session_id)
    assert stored == record
    assert stored.transcript == outcome.transcript
    assert stored.summary is None and stored.summary_state is SummaryState.FAILED
    assert stored.memory_state is MemoryState.PENDING
    assert stored.postcall_error is not None
    assert "summary: APIStatusError" in stored.postcall_error and "model overloaded" in stored.postcall_error
    assert "memory: timed out after 0.3 s" in stored.postcall_error
    assert await store.facts_for(USER) == []
    entry = await store.outbox_entry(outcome.session_id)
    assert entry is not None and entry.payload["session"]["postcall_error"] == stored.postcall_error


async def test_memory_is_skipped_without_an_end_user_or_with_too_few_user_turns(
    sqlite_store: SessionStore,
) -> None:
    extractor = CountingExtractor(["anything"])
    processor = PostCallProcessor(sqlite_store, make_settings(MEMORY_MIN_USER_TURNS=3), None, extractor)

    anonymous = await processor.process(make_outcome(end_user_id=None))
    short = await processor.process(make_outcome())  # 2 user turns < 3
    assert anonymous is not None and short is not None
    assert anonymous.memory_state is MemoryState.SKIPPED and short.memory_state is MemoryState.SKIPPED
    assert anonymous.summary_state is SummaryState.SKIPPED  # no summary model configured
    assert extractor.calls == 0
    assert await sqlite_store.facts_for(USER) == []

    enough = await PostCallProcessor(sqlite_store, make_settings(MEMORY_MIN_USER_TURNS=2), None, extractor).process(
        make_outcome()
    )
    assert enough is not None and enough.memory_state is MemoryState.SYNCED and extractor.calls == 1


async def test_extractor_understands_json_text_and_rejects_anything_else(sqlite_store: SessionStore) -> None:
    settings = make_settings()
    as_text = CountingFactory(['```json\n{"facts": ["The caller lives in Oslo."]}\n```'])
    record = await PostCallProcessor(sqlite_store, settings, None, LLMMemoryExtractor(as_text)).process(make_outcome())
    assert record is not None and record.memory_state is MemoryState.SYNCED
    assert await sqlite_store.facts_for(USER) == ["The caller lives in Oslo."]

    prose = CountingFactory(["The caller seems nice."])
    record = await PostCallProcessor(sqlite_store, settings, None, LLMMemoryExtractor(prose)).process(make_outcome())
    assert record is not None and record.memory_state is MemoryState.PENDING
    assert record.postcall_error is not None and record.postcall_error.startswith("memory: MemoryExtractionError")
    assert await sqlite_store.facts_for(USER) == ["The caller lives in Oslo."]


async def test_without_a_webhook_url_nothing_is_queued(sqlite_store: SessionStore) -> None:
    outcome = make_outcome()
    processor = PostCallProcessor(sqlite_store, make_settings(POSTCALL_WEBHOOK_URL=None), None, None)
    assert await processor.process(outcome) is not None
    assert await sqlite_store.outbox_entry(outcome.session_id) is None


async def test_process_never_raises_when_the_database_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    store = SessionStore(f"postgresql+psycopg://nobody@127.0.0.1:{port}/nothing")
    summaries = CountingFactory(["x"])
    try:
        result = await PostCallProcessor(store, make_settings(POSTCALL_STEP_TIMEOUT_S=5.0), summaries, None).process(
            make_outcome()
        )
    finally:
        await store.aclose()
    assert result is None
    assert summaries.made == []


class MergeFailingStore(SessionStore):
    """A store whose memory merge fails, as a constraint violation or a lost connection would."""

    async def finish_postcall(self, session_id, result, **kwargs):  # type: ignore[no-untyped-def, override]  # passes through
        if result.new_facts is not None:
            raise RuntimeError("merge failed")
        return await super().finish_postcall(session_id, result, **kwargs)


async def test_a_failed_memory_merge_still_records_the_summary_and_queues_the_webhook(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    store = MergeFailingStore(url)
    outcome = make_outcome()
    try:
        record = await PostCallProcessor(
            store, make_settings(), CountingFactory(["A summary."]), CountingExtractor(["A fact."])
        ).process(outcome)
        assert record is not None
        assert record.summary == "A summary." and record.summary_state is SummaryState.COMPLETED
        assert record.memory_state is MemoryState.PENDING
        assert record.postcall_error == "finish: RuntimeError: merge failed"
        assert await store.facts_for(USER) == []
        assert await store.outbox_entry(outcome.session_id) is not None
    finally:
        await store.aclose()
