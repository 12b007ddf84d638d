"""The outcome model, the chat-history conversion and the memory merge rule (no database)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from livekit.agents import llm
from pydantic import ValidationError

from calls.history import transcript_from_history, turn_metrics_from_history
from records.facts import StoredFact, fact_key, normalize_fact, plan_merge
from records.outcome import SessionOutcome, SessionTerminationReason

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _outcome(**overrides: object) -> SessionOutcome:
    values: dict[str, object] = {
        "session_id": uuid.uuid4(),
        "session_type": "live",
        "agent_id": uuid.uuid4(),
        "started_at": T0,
        "ended_at": T0 + timedelta(seconds=5),
    }
    values.update(overrides)
    return SessionOutcome.model_validate(values)


def test_end_reason_uses_platform_values_and_coerces_unknown_ones() -> None:
    assert _outcome(end_reason="participant_left").end_reason is SessionTerminationReason.PARTICIPANT_LEFT
    assert _outcome(end_reason="SILENCE_TIMEOUT").end_reason is SessionTerminationReason.SILENCE_TIMEOUT
    assert _outcome(end_reason="cosmic_rays").end_reason is SessionTerminationReason.UNKNOWN


def test_outcome_requires_exactly_one_owner_and_a_sane_time_range() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        _outcome(team_id=uuid.uuid4())
    with pytest.raises(ValidationError, match="exactly one"):
        _outcome(agent_id=None)
    with pytest.raises(ValidationError, match="before"):
        _outcome(ended_at=T0 - timedelta(seconds=1))
    with pytest.raises(ValidationError):
        _outcome(session_type="production")


def test_datetimes_are_normalised_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    outcome = _outcome(started_at=datetime(2025, 3, 1, 13, 0, tzinfo=paris), ended_at=datetime(2025, 3, 1, 12, 1))
    assert outcome.started_at == T0 and outcome.started_at.tzinfo is UTC
    assert outcome.ended_at.tzinfo is UTC


def test_user_turns_count_only_user_messages_with_words() -> None:
    outcome = _outcome(
        transcript=[
            {"role": "assistant", "text": "Hi", "created_at": T0},
            {"role": "user", "text": "hello", "created_at": T0},
            {"role": "user", "text": "   ", "created_at": T0},
            {"role": "user", "text": "bye", "created_at": T0},
        ]
    )
    assert outcome.user_turns == 2


def test_history_conversion_keeps_the_conversation_with_timestamps_and_latencies() -> None:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are helpful.", created_at=T0.timestamp())
    ctx.add_message(role="assistant", content="Hello!", created_at=T0.timestamp() + 1)
    ctx.add_message(
        role="user",
        content="I need help",
        created_at=T0.timestamp() + 3,
        metrics={"end_of_turn_delay": 0.4, "transcription_delay": 0.1},
    )
    ctx.add_message(
        role="assistant",
        content="Sure.",
        created_at=T0.timestamp() + 5,
        interrupted=True,
        metrics={"e2e_latency": 0.9, "llm_node_ttft": 0.3, "tts_node_ttfb": 0.125},
    )
    ctx.add_message(role="assistant", content="", created_at=T0.timestamp() + 6)

    transcript = transcript_from_history(ctx)
    assert [(t.role, t.text) for t in transcript] == [
        ("assistant", "Hello!"),
        ("user", "I need help"),
        ("assistant", "Sure."),
    ]
    assert transcript[1].created_at == T0 + timedelta(seconds=3)
    assert transcript[2].interrupted is True

    metrics = turn_metrics_from_history(ctx)
    assert len(metrics) == 1
    m = metrics[0]
    assert m.turn_index == 1 and m.created_at == T0 + timedelta(seconds=5)
    assert m.end_of_speech_to_first_audio_ms == pytest.approx(900.0)
    assert m.llm_ttft_ms == pytest.approx(300.0)
    assert m.tts_ttfb_ms == pytest.approx(125.0)


def _stored(i: int, text: str, seen: datetime) -> StoredFact:
    norm = normalize_fact(text)
    assert norm is not None
    return StoredFact(id=i, key=fact_key(norm), fact=norm, created_at=seen, last_seen_at=seen)


def test_merge_plan_dedupes_refreshes_caps_and_expires() -> None:
    now = T0 + timedelta(days=10)
    existing = [
        _stored(1, "Prefers email.", T0),
        _stored(2, "Has a dog.", T0 + timedelta(days=1)),
        _stored(3, "Lives in Lyon.", T0 + timedelta(days=2)),
        _stored(4, "Ancient fact.", T0 - timedelta(days=40)),
    ]
    plan = plan_merge(
        existing,
        ["prefers  EMAIL.", "Drives a van.", "drives a van."],
        cap=3,
        now=now,
        retention=timedelta(days=30),
    )
    assert plan.updates == [(1, "prefers EMAIL.")]
    assert [text for _, text in plan.inserts] == ["Drives a van."]
    # cap 3: two from this call, then the newest other fact (Lyon); the dog and the expired fact go
    assert sorted(plan.deletes) == [2, 4]


def test_merge_plan_with_more_new_facts_than_the_cap_keeps_the_first_ones() -> None:
    plan = plan_merge(
        [_stored(1, "Old.", T0)], [f"Fact {i}." for i in range(5)], cap=2, now=T0, retention=timedelta(days=1)
    )
    assert [text for _, text in plan.inserts] == ["Fact 0.", "Fact 1."]
    assert plan.deletes == [1]
    with pytest.raises(ValueError):
        plan_merge([], ["x"], cap=0, now=T0, retention=timedelta(days=1))
