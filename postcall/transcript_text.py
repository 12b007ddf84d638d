"""The transcript as plain text for a post-call model prompt: one line per turn, speaker first."""

from __future__ import annotations

from collections.abc import Iterable

from records.outcome import TranscriptItem

_SPEAKERS = {"user": "Caller", "assistant": "Agent"}


def render_transcript(transcript: Iterable[TranscriptItem]) -> str:
    lines = [
        f"{_SPEAKERS[item.role]}: {' '.join(item.text.split())}"
        for item in transcript
        if item.role in _SPEAKERS and item.text.strip()
    ]
    return "\n".join(lines)
