"""The call summary: one LLM call with the agent's summary instructions over the transcript."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from livekit.agents import llm

from postcall.transcript_text import render_transcript
from records.outcome import TranscriptItem


class SummaryError(RuntimeError):
    """The model answered, but not with a usable summary."""


async def summarize(model: llm.LLM[Any], instructions: str, transcript: Iterable[TranscriptItem]) -> str:
    chat_ctx = llm.ChatContext.empty()
    chat_ctx.add_message(role="system", content=instructions)
    chat_ctx.add_message(
        role="user",
        content="Transcript of the call (Caller = the end user, Agent = you):\n\n" + render_transcript(transcript),
    )
    response = await model.chat(chat_ctx=chat_ctx).collect()
    text = response.text.strip()
    if not text:
        raise SummaryError("the summary model returned no text")
    return text
