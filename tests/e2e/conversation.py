"""One conversation as a caller has it: join, hear the greeting, ask, hear each answer, hang up."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tests.e2e.caller import Caller, Heard
from tests.e2e.providers import ProviderDoubles


@dataclass
class Turn:
    question: str
    said_at: float
    answer: Heard

    @property
    def voice_to_voice_s(self) -> float:
        """End of the caller's speech as published → first agent audio frame the caller received."""
        return self.answer.at - self.said_at


@dataclass
class Conversation:
    joined_s: float
    greeting: Heard
    turns: list[Turn] = field(default_factory=list)


async def converse(
    caller: Caller,
    doubles: ProviderDoubles,
    questions: list[tuple[str, np.ndarray]],
    *,
    join_timeout: float = 5.0,
    answer_timeout: float = 10.0,
) -> Conversation:
    """`questions` are (what the STT double transcribes, the speech the caller publishes) pairs; the caller is
    connected but not hung up (the test decides how the call ends)."""
    joined_s = await caller.wait_agent(timeout=join_timeout)
    assert caller.connected_at is not None
    greeting = await caller.wait_speech(since=caller.connected_at, timeout=answer_timeout)
    await caller.wait_quiet(since=greeting.at)
    conversation = Conversation(joined_s=joined_s, greeting=greeting)
    for text, pcm in questions:
        doubles.call(lambda text=text: doubles.deepgram.script_transcripts(text))  # type: ignore[misc]  # binds text now
        said_at = await caller.say(pcm)
        answer = await caller.wait_speech(since=said_at, timeout=answer_timeout)
        await caller.wait_quiet(since=answer.at)
        conversation.turns.append(Turn(text, said_at, answer))
    return conversation
