"""The call's opening turn, as `first_speaking` says: disclosure (never interruptible), then static or dynamic
greeting, or nothing when the caller speaks first."""

from __future__ import annotations

from typing import Any

from livekit.agents import AgentSession

from catalog.pipeline_config import FirstSpeakingConfig
from catalog.variables import CallVariables
from procedures.templates import render

# Used when a dynamic greeting has no instructions of its own (the platform's behaviour).
DEFAULT_DYNAMIC_GREETING = "Greet the caller warmly in one short sentence and ask how you can help."


def greet(session: AgentSession[Any], first: FirstSpeakingConfig, variables: CallVariables) -> None:
    values = variables.template_values()
    if first.ai_disclosure_text:
        session.say(render(first.ai_disclosure_text, values), allow_interruptions=False)
    if first.first_speaker != "agent":
        return
    if first.mode == "static" and first.text:
        session.say(render(first.text, values), allow_interruptions=first.interruptible)
    else:
        instructions = render(first.instructions, values) if first.instructions else DEFAULT_DYNAMIC_GREETING
        session.generate_reply(instructions=instructions, allow_interruptions=first.interruptible)
