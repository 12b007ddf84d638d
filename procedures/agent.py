"""The livekit `Agent` that speaks for one catalog agent during a call.

Its instructions are the revision's system prompt rendered over the call's variables; its tools are what the
revision (and, once chosen, the procedure) grants. The supervisor (procedures/supervisor.py) changes the
instructions and tools when it picks a procedure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from livekit.agents import Agent, llm

from catalog.models import Revision
from procedures.templates import render
from procedures.tools import end_call_tool, record_variable_tool
from procedures.variables import CallVariables


def default_tools(variables: CallVariables, on_end: Callable[[str], None]) -> list[llm.Tool | llm.Toolset]:
    tools: list[llm.Tool | llm.Toolset] = [end_call_tool(on_end)]
    recorder = record_variable_tool(variables)
    if recorder is not None:
        tools.append(recorder)
    return tools


class CallAgent(Agent):
    def __init__(
        self,
        *,
        revision: Revision,
        variables: CallVariables,
        on_end: Callable[[str], None],
        chat_ctx: llm.ChatContext | None = None,
        extra_tools: Sequence[llm.Tool | llm.Toolset] = (),
    ) -> None:
        self.revision = revision
        self.variables = variables
        super().__init__(
            instructions=render(revision.system_prompt, variables.template_values()),
            tools=[*default_tools(variables, on_end), *extra_tools],
            chat_ctx=chat_ctx,
        )
