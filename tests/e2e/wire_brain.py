"""The example scenarios' deterministic models behind the OpenAI double's wire format, for voice mode.

Text mode's test runs the scenarios against `tests/doubles/scenario_brain.py` through `FakeLLM`; here the same
decisions answer HTTP chat requests (the worker's agents, routers and the simulator's persona caller and judge all
reach the OpenAI double), so a scenario is held to the same model behaviour in both modes. A request is read back
into a livekit `ChatContext` and tools, as the plugin built them, and the brain's reply is sent as the double's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import llm

from tests.doubles import fake_llm
from tests.doubles.openai_server import Reply, ToolCall
from tests.doubles.scenario_brain import agent_brain, persona_lines, verdicts
from tests.e2e.brain import ANSWER_TOKEN_MS, ANSWER_TTFT_MS


@dataclass
class WireBrain:
    """The persona plays `persona` line by line, then hangs up; the judge answers `judge` in turn, then repeats."""

    persona: tuple[str, ...] = ("My kettle broke after two days and I want a refund.", "The order number is 2077.")
    judge: tuple[tuple[str, str], ...] = (("pass", "the conversation shows it"),)
    _persona: Iterator[fake_llm.Reply] | None = field(default=None, repr=False)
    _judge: Iterator[fake_llm.Reply] | None = field(default=None, repr=False)

    def reset(self) -> None:
        """A new persona call and a new judge script (for the next scenario)."""
        self._persona = persona_lines(*self.persona)
        self._judge = verdicts(*self.judge)

    def __call__(self, body: dict[str, Any]) -> Reply:
        chat_ctx, tools = request_context(body)
        names = [t.id for t in tools]
        if "hang_up" in names:
            self._persona = self._persona or persona_lines(*self.persona)
            return _wire(next(self._persona))
        if "submit_verdict" in names:
            self._judge = self._judge or verdicts(*self.judge)
            return _wire(next(self._judge))
        return _wire(agent_brain(chat_ctx, tools))


def request_context(body: dict[str, Any]) -> tuple[llm.ChatContext, list[llm.Tool]]:
    ctx = llm.ChatContext()
    names: dict[str, str] = {}
    for message in body.get("messages") or []:
        role, text = message.get("role"), _text(message.get("content"))
        if role in ("system", "developer", "user") or (role == "assistant" and text):
            ctx.add_message(role=role, content=text)
        for call in message.get("tool_calls") or []:
            function = call.get("function", {})
            names[call["id"]] = function.get("name", "")
            ctx.items.append(
                llm.FunctionCall(call_id=call["id"], name=names[call["id"]], arguments=function.get("arguments", ""))
            )
        if role == "tool":
            call_id = message.get("tool_call_id", "")
            ctx.items.append(
                llm.FunctionCallOutput(call_id=call_id, name=names.get(call_id, ""), output=text, is_error=False)
            )
    tools: list[llm.Tool] = []
    for spec in body.get("tools") or []:
        function = spec.get("function", {})
        schema = {k: function[k] for k in ("name", "description", "parameters") if k in function}
        schema.setdefault("parameters", {"type": "object", "properties": {}})

        async def unused(raw_arguments: dict[str, object]) -> None:  # never called: the worker runs the tools
            return None

        tools.append(llm.function_tool(unused, raw_schema=schema))
    return ctx, tools


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _wire(reply: fake_llm.Reply) -> Reply:
    if reply.tool_calls:
        return Reply(tool_calls=[ToolCall(name, dict(arguments)) for name, arguments in reply.tool_calls], ttft_ms=50)
    return Reply(text=reply.text, ttft_ms=ANSWER_TTFT_MS, token_interval_ms=ANSWER_TOKEN_MS)
