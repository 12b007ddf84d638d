"""The constrained router: one call to a small, fast model that picks one option by name, or none.

Used for the turn-1 procedure choice and for the team supervisor. The model sees a system prompt listing
the options (name, description, example requests) and the caller's words, and must answer by calling one
function whose only parameter is an enum of the option names plus "none", with `tool_choice="required"`:
OpenAI-compatible servers (OpenAI, vLLM, llama.cpp, Ollama) constrain the answer to that schema, so the
answer is a name we know. Servers that ignore `tool_choice` sometimes answer in text; a text answer that is
exactly one option name (or "none") is accepted, anything else is an error.

Errors and timeouts are outcomes, not exceptions: the caller of `route()` falls back and the call goes on.
`RouteResult.detail` says why in words that never quote the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from livekit.agents import APITimeoutError, llm
from livekit.agents.llm import RawFunctionTool, function_tool
from livekit.agents.types import APIConnectOptions

from catalog.pipeline_config import ModelChainEntry
from pipelines.providers import PROVIDERS, SettingsWithKeys

log = logging.getLogger("voice_worker.router")

NONE = "none"
CHOICE_PARAMETER = "name"

RouteOutcome = Literal["chosen", "none", "error", "timeout"]

# `choose(raw_arguments) -> str` as a raw-schema tool (see `ConstrainedRouter._build_tool`).
RouterTool: TypeAlias = RawFunctionTool[[dict[str, object]], Coroutine[Any, Any, str]]


@dataclass(frozen=True)
class RouteOption:
    name: str
    description: str
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteResult:
    """`choice` is an option name when `outcome` is "chosen", else None."""

    choice: str | None
    outcome: RouteOutcome
    latency_ms: float
    detail: str | None = None


class ConstrainedRouter:
    """Routes an utterance to one of `options` with `model`, within `timeout_s`.

    `subject` names what is being chosen ("procedure", "team_member"); it becomes the tool name
    `choose_<subject>` and appears in the prompt. `context` is an optional line about the business.
    """

    def __init__(
        self,
        model: llm.LLM[Any],
        options: Sequence[RouteOption],
        *,
        timeout_s: float,
        subject: str = "procedure",
        context: str | None = None,
    ) -> None:
        if not options:
            raise ValueError("a router needs at least one option")
        names = [o.name for o in options]
        if len(set(names)) != len(names):
            raise ValueError("router option names must be unique")
        if any(n.strip().lower() == NONE for n in names):
            raise ValueError(f"{NONE!r} is reserved for 'no option fits'")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.model = model
        self.options = tuple(options)
        self.timeout_s = timeout_s
        self.subject = subject
        self.context = context
        self.tool_name = f"choose_{subject}"
        self._tool = self._build_tool()

    @property
    def choices(self) -> tuple[str, ...]:
        """The enum the model must answer from: the option names, then "none"."""
        return (*(o.name for o in self.options), NONE)

    @property
    def tool(self) -> RouterTool:
        return self._tool

    def _build_tool(self) -> RouterTool:
        schema = {
            "name": self.tool_name,
            "description": f"Choose the {self.subject.replace('_', ' ')} that fits the caller's request.",
            "parameters": {
                "type": "object",
                "properties": {
                    CHOICE_PARAMETER: {
                        "type": "string",
                        "enum": list(self.choices),
                        "description": f'One of the listed names, or "{NONE}" if none clearly fits.',
                    }
                },
                "required": [CHOICE_PARAMETER],
                "additionalProperties": False,
            },
        }

        # The router reads the tool call from the stream and never executes it; the body only has to be a
        # valid raw tool, and echoing the choice keeps it honest if a session ever did run it.
        async def choose(raw_arguments: dict[str, object]) -> str:
            return str(raw_arguments.get(CHOICE_PARAMETER, NONE))

        return function_tool(choose, raw_schema=schema)

    def prompt(self) -> str:
        readable = self.subject.replace("_", " ")
        lines = [f"You route a phone caller to the {readable} that fits what they just said."]
        if self.context:
            lines.append(self.context)
        lines.append(f"The {readable}s:")
        for option in self.options:
            lines.append(f"- {option.name}: {option.description}")
            if option.examples:
                lines.append("  Callers who need it say things like: " + "; ".join(f'"{e}"' for e in option.examples))
        lines.append(
            f"Call {self.tool_name} with the name of the one {readable} that fits best, "
            f'or "{NONE}" if none clearly fits. Do not answer the caller.'
        )
        return "\n".join(lines)

    def request(self, utterance: str) -> llm.ChatContext:
        chat_ctx = llm.ChatContext.empty()
        chat_ctx.add_message(role="system", content=self.prompt())
        chat_ctx.add_message(role="user", content=utterance)
        return chat_ctx

    async def route(self, utterance: str) -> RouteResult:
        started = time.perf_counter()

        def elapsed_ms() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            answer = await asyncio.wait_for(self._ask(utterance), self.timeout_s)
        except (TimeoutError, APITimeoutError):
            return RouteResult(None, "timeout", elapsed_ms(), f"no answer within {self.timeout_s * 1000:.0f} ms")
        except Exception as exc:  # any provider error: the call goes on without a choice
            return RouteResult(None, "error", elapsed_ms(), f"router request failed: {type(exc).__name__}")

        if answer is None:
            return RouteResult(None, "error", elapsed_ms(), "router answered without a choice")
        if answer == NONE:
            return RouteResult(None, "none", elapsed_ms())
        if answer not in self.choices:
            return RouteResult(None, "error", elapsed_ms(), "router answered a name that is not an option")
        return RouteResult(answer, "chosen", elapsed_ms())

    async def _ask(self, utterance: str) -> str | None:
        # One attempt only: a retry cannot fit in a budget of a few hundred milliseconds.
        conn_options = APIConnectOptions(max_retry=0, timeout=self.timeout_s, retry_interval=0)
        text: list[str] = []
        async with self.model.chat(
            chat_ctx=self.request(utterance),
            tools=[self._tool],
            tool_choice="required",
            conn_options=conn_options,
        ) as stream:
            async for chunk in stream:
                if chunk.delta is None:
                    continue
                for call in chunk.delta.tool_calls or ():
                    if call.name == self.tool_name:
                        return self._parse_arguments(call.arguments)
                if chunk.delta.content:
                    text.append(chunk.delta.content)
        spoken = "".join(text).strip().strip(".\"'").strip()
        return spoken if spoken in self.choices else None

    def _parse_arguments(self, arguments: str) -> str | None:
        try:
            parsed = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return None
        value = parsed.get(CHOICE_PARAMETER) if isinstance(parsed, dict) else None
        return value if isinstance(value, str) else None


class RouterModels:
    """The router model of each `router_model_settings` entry, built once per call from the providers table.

    No entry means the call's own LLM (the pipeline's model chain, primary first), as the catalog documents.
    An entry this worker cannot build (unknown provider, no key) also falls back to the call's LLM, with a
    warning, rather than leaving every turn 1 without a router. Models built here are closed by `aclose()`.
    """

    def __init__(self, settings: SettingsWithKeys, default: llm.LLM[Any] | None) -> None:
        self._settings = settings
        self._default = default
        self._built: dict[str, llm.LLM[Any]] = {}

    def __call__(self, entry: ModelChainEntry | None) -> llm.LLM[Any] | None:
        if entry is None:
            return self._default
        key = entry.model_dump_json()
        if key in self._built:
            return self._built[key]
        provider = PROVIDERS.get(entry.provider)
        api_key = provider.api_key(self._settings) if provider is not None else None
        if provider is None or provider.build_llm is None or api_key is None:
            log.warning(
                "router model %s/%s cannot be built here; routing with the call's LLM", entry.provider, entry.model
            )
            return self._default
        model = provider.build_llm(entry, api_key=api_key)
        self._built[key] = model
        return model

    async def aclose(self) -> None:
        models, self._built = list(self._built.values()), {}
        await asyncio.gather(*(m.aclose() for m in models), return_exceptions=True)
