"""The tools a procedure may grant the agent: end the call, record a derived context variable.

(Team handoff tools live with the team logic in `procedures/team.py`.) Each tool is a livekit-agents function
tool or toolset, so the LLM sees an ordinary tool schema and the session runs it with the usual machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias

from livekit.agents import llm
from livekit.agents.beta.tools import EndCallTool
from livekit.agents.llm import Toolset, function_tool
from livekit.agents.voice.events import RunContext

from catalog.context_vars import ContextVarError
from catalog.variables import CallVariables

# `record_variable(context, name, value) -> str` as a function tool (see `record_variable_tool`).
RecordVariableTool: TypeAlias = llm.FunctionTool[[RunContext[None], str, str], Coroutine[Any, Any, str]]


def end_call_tool(on_end: Callable[[str], None]) -> EndCallTool:
    """livekit's EndCallTool; `on_end("agent_initiated")` records why the call ended before the room goes."""

    async def _called(_: Toolset.ToolCalledEvent) -> None:
        on_end("agent_initiated")

    return EndCallTool(
        extra_description="Use it only after the caller's request is resolved or they say goodbye.",
        delete_room=True,
        end_instructions="Say a short goodbye.",
        ignore_on_enter=True,
        on_tool_called=_called,
    )


def record_variable_tool(variables: CallVariables) -> RecordVariableTool | None:
    """A tool that writes one of the call's `derived` variables, coerced to its declared type."""
    writable = {name: spec for name, spec in variables.specs.items() if spec.source == "derived"}
    if not writable:
        return None
    described = "; ".join(
        f"{name} ({spec.type}{': ' + '|'.join(spec.enum_values) if spec.enum_values else ''})"
        + (f" - {spec.description}" if spec.description else "")
        for name, spec in sorted(writable.items())
    )

    async def record_variable(context: RunContext[None], name: str, value: str) -> str:
        try:
            stored: Any = variables.record(name, value)
        except ContextVarError as exc:
            return f"Not recorded: {exc}"
        return f"Recorded {name} = {stored!r}."

    return function_tool(
        record_variable,
        name="record_variable",
        description=(
            "Record a fact the caller told you into one of the call's context variables. "
            f"Variables you may record: {described}."
        ),
    )
