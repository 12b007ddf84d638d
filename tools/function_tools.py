"""A call's platform tools as livekit-agents function tools, and the record of every run.

Each attached tool becomes a raw function tool named by its slug, with the JSON schema `tools.arguments` builds
from its `variables` and operator values, so the session runs it with livekit's ordinary machinery (the model
calls it, the session awaits it, the result goes back to the model). An api_call tool's run goes through
`tools.api_call.run_api_tool` with the call's context variables as they are at that moment; its
`output_bindings` then write context variables, and the agent's instructions are rendered again so the next
turn sees them. While a tool has been running for `filler_after_s` with the agent silent, the agent says the
filler line (the tool's `filler_text`, else the configured one) through livekit's `RunContext.with_filler`.

Every run is recorded (`ToolCallRecord`: slug, start, end, duration, status, HTTP status, attempts, error),
never with arguments, request or response: those may carry what the caller said or what a secret opened.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

from livekit.agents import Agent
from livekit.agents.llm import RawFunctionTool, function_tool
from livekit.agents.voice.events import RunContext

from catalog.models import Revision
from catalog.tools import ToolDefinition, ToolRef, find_tool
from catalog.variables import CallVariables
from records.outcome import ToolCallRecord
from tools.api_call import ApiCaller, run_api_tool
from tools.arguments import operator_values, parameters_schema
from tools.config import ToolConfig
from tools.mapping import bind_outputs
from tools.transfer import TeamHandoff, TransferLine

log = logging.getLogger("voice_worker.tools")

MAX_REASON_CHARS = 200

ApiTool: TypeAlias = RawFunctionTool[[dict[str, object], RunContext[None]], Coroutine[Any, Any, str]]
TransferTool: TypeAlias = RawFunctionTool[[dict[str, object], RunContext[None]], Coroutine[Any, Any, Agent | str]]
PlatformTool: TypeAlias = ApiTool | TransferTool


class CallTools:
    """The platform tools of one call: built per agent revision, run with one HTTP client, recorded together."""

    def __init__(
        self,
        tools: Mapping[uuid.UUID, ToolDefinition],
        config: ToolConfig,
        *,
        transfer_line: TransferLine | None = None,
        caller: ApiCaller | None = None,
    ) -> None:
        self._tools = tools
        self.config = config
        self._line = transfer_line
        self._caller = caller or ApiCaller(config.policy, config.limits)
        self.records: list[ToolCallRecord] = []

    def for_revision(
        self,
        revision: Revision,
        variables: CallVariables,
        *,
        on_variables_changed: Callable[[], Awaitable[None]],
        team_handoff: TeamHandoff | None = None,
    ) -> dict[str, PlatformTool]:
        """The revision's attached tools by slug (refs that name no tool are skipped, and logged)."""
        built: dict[str, PlatformTool] = {}
        for ref in revision.tool_refs:
            tool = find_tool(self._tools, ref)
            if tool is None:
                log.warning(
                    "revision %s: tool %s is not in the catalog; the call runs without it", revision.id, ref.label
                )
                continue
            if tool.slug in built:
                continue
            if tool.tool_type == "api_call":
                built[tool.slug] = self._api_tool(tool, ref, variables, on_variables_changed)
            else:
                built[tool.slug] = self._transfer_tool(tool, team_handoff)
        return built

    async def aclose(self) -> None:
        await self._caller.aclose()

    # -- running ------------------------------------------------------------------------------------------

    def _record(
        self,
        tool: ToolDefinition,
        started_at: datetime,
        started: float,
        status: str,
        *,
        http_status: int | None = None,
        attempts: int = 0,
        error: str | None = None,
    ) -> ToolCallRecord:
        duration_ms = (time.perf_counter() - started) * 1000
        record = ToolCallRecord(
            name=tool.slug,
            tool_id=tool.id,
            tool_type=tool.tool_type,
            started_at=started_at,
            ended_at=datetime.now(UTC),
            duration_ms=duration_ms,
            status=status,
            http_status=http_status,
            attempts=attempts,
            error=error,
        )
        self.records.append(record)
        log.info(
            "tool %s: %s%s in %.0f ms%s",
            tool.slug,
            status,
            f" (HTTP {http_status})" if http_status is not None else "",
            duration_ms,
            f", {attempts} attempts" if attempts > 1 else "",
        )
        return record

    @contextlib.asynccontextmanager
    async def _filler(self, context: RunContext[None], tool: ToolDefinition) -> AsyncIterator[None]:
        if self.config.filler_after_s <= 0:
            yield
            return
        async with context.with_filler(tool.filler_text or self.config.filler_text, delay=self.config.filler_after_s):
            yield

    def _api_tool(
        self,
        tool: ToolDefinition,
        ref: ToolRef,
        variables: CallVariables,
        on_variables_changed: Callable[[], Awaitable[None]],
    ) -> ApiTool:
        schema = {
            "name": tool.slug,
            "description": tool.description,
            "parameters": parameters_schema(tool, operator_values(tool, ref.input_defaults)),
        }
        bindings = dict(ref.output_bindings or {})

        # Raw arguments: the model's values are checked and coerced here, so a wrong type becomes an answer the
        # model can act on instead of a failed call.
        async def run(raw_arguments: dict[str, object], context: RunContext[None]) -> str:
            started_at, started = datetime.now(UTC), time.perf_counter()
            async with self._filler(context, tool):
                result = await run_api_tool(
                    tool,
                    raw_arguments,
                    variables.template_values(),
                    caller=self._caller,
                    secrets=self.config.secrets,
                    ref_defaults=ref.input_defaults,
                )
            if result.status == "ok" and bindings:
                bind_outputs(result.result, bindings, variables)
                await on_variables_changed()
            self._record(
                tool,
                started_at,
                started,
                result.status,
                http_status=result.http_status,
                attempts=result.attempts,
                error=result.error,
            )
            return result.for_model(self.config.limits.max_result_chars)

        return function_tool(run, raw_schema=schema)

    def _transfer_tool(self, tool: ToolDefinition, team_handoff: TeamHandoff | None) -> TransferTool:
        schema = {
            "name": tool.slug,
            "description": tool.description,
            "parameters": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why the caller is transferred, in a few words."}
                },
                "required": [],
                "additionalProperties": False,
            },
        }

        async def run(raw_arguments: dict[str, object], context: RunContext[None]) -> Agent | str:
            started_at, started = datetime.now(UTC), time.perf_counter()
            reason = str(raw_arguments.get("reason") or "").strip()[:MAX_REASON_CHARS] or None
            if self._line is None:
                self._record(tool, started_at, started, "unavailable", error="no call to transfer")
                return "Transfers are not available here. Keep helping the caller yourself."
            chat_ctx = context.session.current_agent.chat_ctx
            outcome = await self._line.transfer(tool, context.session, chat_ctx, reason, team_handoff)
            self._record(tool, started_at, started, outcome.status, error=outcome.error)
            return outcome.reply

        return function_tool(run, raw_schema=schema)
