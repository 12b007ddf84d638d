"""The livekit `Agent` that speaks for one catalog agent during a call.

Its instructions are the revision's system prompt rendered over the call's variables; its tools are what the
revision grants before a procedure is chosen (end the call, record a derived variable, in a team the handoff
to another member, and the platform tools its `tool_refs` attach, tools/function_tools.py). Once the supervisor
(procedures/supervisor.py) has chosen a procedure, the agent runs under `instructions_for(procedure)` (the
system prompt followed by the procedure's instructions) and `tools_for(procedure)` (the procedure's tools). The
supervisor also takes over `llm_node` for turn 1. The call's pipeline frames every agent the same way
(pipelines/framing.py): its persona ahead of the system prompt, its reply-language rule after it, and its
pronunciation overrides on the text the TTS reads (`tts_node`; the transcript keeps the words as written).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Callable, Sequence

from livekit import rtc
from livekit.agents import Agent, llm
from livekit.agents.voice.agent import ModelSettings

from catalog.models import Procedure, Revision, ToolName
from catalog.variables import CallVariables
from pipelines.framing import AgentFraming
from procedures.supervisor import LLMNodeChunk, SupervisedAgent, Supervisor
from procedures.templates import render
from procedures.tools import end_call_tool, record_variable_tool
from tools.function_tools import CallTools
from tools.transfer import TeamHandoff

AgentTool = llm.Tool | llm.Toolset


def _tool_ids(tools: Sequence[AgentTool]) -> frozenset[str]:
    """The function names the LLM sees for these tools (a toolset contributes each of its functions)."""
    return frozenset(llm.ToolContext(list(tools)).function_tools)


class CallAgent(SupervisedAgent):
    """`handoff_tool` is the team's transfer tool (team calls only); `extra_tools` are always available,
    whatever the procedure; `reply_on_enter` makes the agent answer as soon as it takes over (a handoff);
    `label` names the agent in the session's history (a team member's router name); `platform_tools` builds the
    revision's attached tools, and `team_handoff` lets a call_transfer tool hand a web caller to a member;
    `framing` is what the call's pipeline adds to every agent (persona, reply language, pronunciation)."""

    def __init__(
        self,
        *,
        revision: Revision,
        variables: CallVariables,
        on_end: Callable[[str], None],
        chat_ctx: llm.ChatContext | None = None,
        extra_tools: Sequence[AgentTool] = (),
        handoff_tool: llm.Tool | None = None,
        supervisor: Supervisor | None = None,
        reply_on_enter: bool = False,
        label: str | None = None,
        platform_tools: CallTools | None = None,
        team_handoff: TeamHandoff | None = None,
        framing: AgentFraming | None = None,
    ) -> None:
        self.framing = framing or AgentFraming()
        self.revision = revision
        self.variables = variables
        self.supervisor = supervisor
        self.reply_on_enter = reply_on_enter
        recorder = record_variable_tool(variables)
        self._granted: dict[ToolName, list[AgentTool]] = {
            "end_call": [end_call_tool(on_end)],
            "record_variable": [recorder] if recorder is not None else [],
            "handoff": [handoff_tool] if handoff_tool is not None else [],
        }
        if platform_tools is not None:
            attached = platform_tools.for_revision(
                revision, variables, on_variables_changed=self.refresh_instructions, team_handoff=team_handoff
            )
            for slug, tool in attached.items():
                self._granted.setdefault(slug, [tool])
        self._always: list[AgentTool] = list(extra_tools)
        super().__init__(
            instructions=self.instructions_for(None),
            tools=self.tools_for(None),
            chat_ctx=chat_ctx,
            id=label,
        )
        if supervisor is not None:
            supervisor.bind(self)

    def instructions_for(self, procedure: Procedure | None) -> str:
        """The system prompt, then the procedure's instructions, rendered over the variables as they are now, in
        the call's framing (persona first, reply-language rule last)."""
        values = self.variables.template_values()
        base = render(self.revision.system_prompt, values)
        if procedure is not None:
            steps = render(procedure.instructions, values)
            base = f"{base}\n\nFollow this procedure for the rest of the call ({procedure.name}):\n{steps}"
        persona = render(self.framing.persona, values) if self.framing.persona else None
        return self.framing.frame(persona, base)

    async def refresh_instructions(self) -> None:
        """The instructions rendered again over the variables as they are now (a tool's output bindings changed
        some), under the procedure chosen so far, so the next turn sees the new values."""
        decision = self.supervisor.decision if self.supervisor is not None else None
        # RuntimeError: the agent left the session (handoff, close) while the tool ran
        with contextlib.suppress(RuntimeError):
            await self.update_instructions(self.instructions_for(decision.procedure if decision else None))

    def tools_for(self, procedure: Procedure | None) -> list[AgentTool]:
        """Before a choice (None) every tool the agent has; under a procedure, the ones it grants."""
        names: Sequence[ToolName] = tuple(self._granted) if procedure is None else procedure.tools
        granted = [tool for name in dict.fromkeys(names) for tool in self._granted.get(name, [])]
        return [*granted, *self._always]

    def tool_ids_for(self, procedure: Procedure | None) -> frozenset[str]:
        return _tool_ids(self.tools_for(procedure))

    def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterable[LLMNodeChunk]:
        if self.supervisor is None:
            return Agent.default.llm_node(self, chat_ctx, tools, model_settings)
        return self.supervisor.llm_node(chat_ctx, tools, model_settings)

    def tts_node(self, text: AsyncIterable[str], model_settings: ModelSettings) -> AsyncIterable[rtc.AudioFrame]:
        pronunciation = self.framing.pronunciation
        spoken = pronunciation.rewrite(text) if pronunciation is not None else text
        return Agent.default.tts_node(self, spoken, model_settings)

    async def on_enter(self) -> None:
        if self.supervisor is not None:
            self.supervisor.start(self.session, self.chat_ctx)
        if self.reply_on_enter:
            self.session.generate_reply()

    async def on_exit(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
