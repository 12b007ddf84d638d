"""The caller a scenario describes as a persona with a goal, played by an LLM one turn at a time.

The LLM sees the conversation from the caller's side (the agent's lines as the other party's, its own as its
own) and either says its next line or calls `hang_up` when the goal is reached or hopeless. Both modes use it:
text mode types the line, voice mode speaks it.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import llm
from livekit.agents.llm import function_tool

from simulations.results import Line
from simulations.scenario import Caller

_INSTRUCTIONS = (
    "You are role-playing a person who phones a company and talks to its voice agent. Stay in character: speak "
    "as that person would on the phone, one short turn at a time (one or two sentences), plain words, no stage "
    "directions, no lists. Never say you are an AI or that this is a simulation. When your goal is reached, or "
    "the agent said goodbye, or the conversation cannot get you further, call hang_up instead of speaking."
)


class PersonaCaller:
    def __init__(self, caller: Caller, model: llm.LLM[Any]) -> None:
        assert caller.persona is not None and caller.goal is not None  # the schema requires both
        self._model = model
        self._system = f"{_INSTRUCTIONS}\n\nWho you are: {caller.persona}\nYour goal on this call: {caller.goal}"

    async def next_line(self, transcript: list[Line]) -> str | None:
        """The caller's next line, or None when the caller hangs up."""
        hung_up: list[bool] = []

        @function_tool
        async def hang_up() -> str:
            """End the call: the goal is reached, the agent said goodbye, or there is nothing more to get."""
            hung_up.append(True)
            return "ok"

        ctx = llm.ChatContext()
        ctx.add_message(role="system", content=self._system)
        for line in transcript:
            # the caller's own lines are the model's; the agent's are what it hears
            ctx.add_message(role="assistant" if line.role == "user" else "user", content=line.text)
        if not transcript:
            ctx.add_message(role="user", content="(the call connects; nobody has spoken yet)")
        response = await self._model.chat(chat_ctx=ctx, tools=[hang_up]).collect()
        if any(call.name == "hang_up" for call in response.tool_calls):
            return None
        text = response.text.strip()
        return text or None
