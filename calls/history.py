"""Turn an AgentSession's chat history into the transcript and per-turn latency figures of a SessionOutcome.

Only the conversation is kept (user and assistant messages with text); instructions, tool calls and
handoff items are not part of what the caller heard. Latencies come from `ChatMessage.metrics` on
assistant messages (livekit-agents 1.8): `e2e_latency` (end of user speech to first agent audio),
`llm_node_ttft` and `tts_node_ttfb`, all in seconds there and in milliseconds here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from livekit.agents import llm

from records.outcome import TranscriptItem, TurnMetrics


def _messages(items: llm.ChatContext | Iterable[Any]) -> list[llm.ChatMessage]:
    source = items.items if isinstance(items, llm.ChatContext) else items
    return [item for item in source if isinstance(item, llm.ChatMessage)]


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def transcript_from_history(history: llm.ChatContext | Iterable[Any]) -> list[TranscriptItem]:
    out: list[TranscriptItem] = []
    for msg in _messages(history):
        if msg.role not in ("user", "assistant"):
            continue
        text = (msg.text_content or "").strip()
        if not text:
            continue
        out.append(
            TranscriptItem(role=msg.role, text=text, created_at=_at(msg.created_at), interrupted=msg.interrupted)
        )
    return out


def _ms(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else max(float(value) * 1000.0, 0.0)


def turn_metrics_from_history(history: llm.ChatContext | Iterable[Any]) -> list[TurnMetrics]:
    out: list[TurnMetrics] = []
    turn = 0
    for msg in _messages(history):
        if msg.role != "assistant":
            continue
        metrics: dict[str, Any] = dict(msg.metrics or {})
        figures = {
            "end_of_speech_to_first_audio_ms": _ms(metrics, "e2e_latency"),
            "llm_ttft_ms": _ms(metrics, "llm_node_ttft"),
            "tts_ttfb_ms": _ms(metrics, "tts_node_ttfb"),
        }
        if any(v is not None for v in figures.values()):
            out.append(TurnMetrics(turn_index=turn, created_at=_at(msg.created_at), **figures))
        turn += 1
    return out
