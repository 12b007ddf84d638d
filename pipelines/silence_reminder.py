"""`silence_reminder_mode`: what the agent says when the caller has gone quiet (calls/limits.py decides when).

- `static`: `silence_reminder_message`, word for word (no message: no reminders).
- `auto`: the LLM writes the reminder from the conversation so far, in one short sentence, in the caller's language;
  `silence_reminder_message`, when set, is the example it follows. No tools run for it.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice.speech_handle import SpeechHandle

from catalog.pipeline_config import VoicePipelineConfig


def reminds(config: VoicePipelineConfig) -> bool:
    """Whether there is anything to say when the caller goes quiet."""
    return config.silence_reminder_mode == "auto" or bool(config.silence_reminder_message)


def auto_instructions(config: VoicePipelineConfig) -> str:
    seconds = (config.silence_timeout_ms or 0) / 1000
    example = f' Something like: "{config.silence_reminder_message}"' if config.silence_reminder_message else ""
    return (
        f"The caller has said nothing for {seconds:g} seconds. In one short, friendly sentence, check whether they "
        "are still there, picking up where the conversation left off (what you last asked or offered). Do not "
        f"repeat an earlier sentence word for word.{example}"
    )


def remind(session: AgentSession[Any], config: VoicePipelineConfig) -> SpeechHandle:
    if config.silence_reminder_mode == "auto":
        return session.generate_reply(instructions=auto_instructions(config), tool_choice="none")
    assert config.silence_reminder_message
    return session.say(config.silence_reminder_message)
