"""A scripted, in-process `llm.LLM` double for AgentSession conversations.

Every provider request (every `LLMStream` attempt, so retries count) consumes one scripted
`Reply` and is recorded as an `LLMCall`. All timestamps are `time.time()` seconds, the clock
livekit-agents uses for its own events, so they compare directly with `ChatMessage.created_at`,
playback events and the other doubles in this package.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from livekit.agents import llm
from livekit.agents._exceptions import APIError
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

__all__ = [
    "FakeLLM",
    "FakeLLMStream",
    "LLMCall",
    "RecordedMessage",
    "Reply",
    "ReplyScript",
    "echo_reply",
]


@dataclass(frozen=True)
class Reply:
    """One scripted provider response.

    `tool_calls` are `(tool_name, arguments)` pairs; the session runs the matching
    `@function_tool` and then calls the LLM again with the tool output in the context.
    `error` is raised after `ttft_s` instead of answering, which is how fallbacks and
    retries are exercised (use `APIConnectionError` / `APIStatusError`).
    `None` pacing means the `FakeLLM` defaults.
    """

    text: str = ""
    tool_calls: Sequence[tuple[str, Mapping[str, Any]]] = ()
    ttft_s: float | None = None
    token_interval_s: float | None = None
    error: APIError | None = None


@dataclass(frozen=True)
class RecordedMessage:
    role: str
    text: str


@dataclass
class LLMCall:
    """What one provider request saw, and when it produced output.

    `messages` holds the chat messages only (system included); tool results are in
    `tool_outputs` as `(tool_name, output)` pairs."""

    index: int
    started_at: float
    messages: tuple[RecordedMessage, ...]
    instructions: str | None
    tool_names: tuple[str, ...]
    tool_outputs: tuple[tuple[str, str], ...]
    reply: Reply
    first_chunk_at: float | None = None
    finished_at: float | None = None
    error: APIError | None = None

    @property
    def last_user_text(self) -> str | None:
        for msg in reversed(self.messages):
            if msg.role == "user":
                return msg.text
        return None


ReplyFn = Callable[[llm.ChatContext, list[llm.Tool]], "Reply | str | Awaitable[Reply | str]"]
ReplyScript = Sequence["Reply | str"] | ReplyFn


def echo_reply(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
    """The default script: repeat the caller's last words, or greet when there are none."""
    for item in reversed(chat_ctx.items):
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            return Reply(text=f"You said: {item.text_content or ''}")
    return Reply(text="Hello.")


def _record_messages(chat_ctx: llm.ChatContext) -> tuple[RecordedMessage, ...]:
    return tuple(RecordedMessage(role=msg.role, text=msg.text_content or "") for msg in chat_ctx.messages())


def _instructions(chat_ctx: llm.ChatContext) -> str | None:
    parts = [msg.text_content or "" for msg in chat_ctx.messages() if msg.role in ("system", "developer")]
    return "\n".join(parts) if parts else None


class FakeLLM(llm.LLM):
    """`FakeLLM()` echoes; `FakeLLM(["a", Reply(...)])` plays a list, then echoes once it
    runs out; `FakeLLM(fn)` asks `fn(chat_ctx, tools)` (sync or async) for every request.
    `default_ttft_s` / `default_token_interval_s` pace replies that leave their pacing `None`."""

    def __init__(
        self,
        script: ReplyScript | None = None,
        *,
        default_ttft_s: float = 0.0,
        default_token_interval_s: float = 0.0,
        model: str = "fake-llm",
    ) -> None:
        super().__init__()
        self._script = script
        self._next_index = 0
        self._default_ttft_s = default_ttft_s
        self._default_token_interval_s = default_token_interval_s
        self._model = model
        self.calls: list[LLMCall] = []

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return "fake"

    @property
    def remaining(self) -> int:
        """Scripted replies not yet used (0 for callable scripts)."""
        if self._script is None or callable(self._script):
            return 0
        return max(len(self._script) - self._next_index, 0)

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> FakeLLMStream:
        return FakeLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)

    async def _next_reply(self, chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
        script = self._script
        if callable(script):
            produced = script(chat_ctx, tools)
            if inspect.isawaitable(produced):
                produced = await produced
        elif script is not None and self._next_index < len(script):
            produced = script[self._next_index]
            self._next_index += 1
        else:
            produced = echo_reply(chat_ctx, tools)

        if isinstance(produced, str):
            produced = Reply(text=produced)
        return Reply(
            text=produced.text,
            tool_calls=produced.tool_calls,
            ttft_s=self._default_ttft_s if produced.ttft_s is None else produced.ttft_s,
            token_interval_s=(
                self._default_token_interval_s if produced.token_interval_s is None else produced.token_interval_s
            ),
            error=produced.error,
        )


class FakeLLMStream(llm.LLMStream):
    def __init__(
        self,
        fake_llm: FakeLLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(fake_llm, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._fake = fake_llm

    async def _run(self) -> None:
        started_at = time.time()
        reply = await self._fake._next_reply(self._chat_ctx, self._tools)
        call = LLMCall(
            index=len(self._fake.calls),
            started_at=started_at,
            messages=_record_messages(self._chat_ctx),
            instructions=_instructions(self._chat_ctx),
            tool_names=tuple(tool.id for tool in self._tools),
            tool_outputs=tuple(
                (item.name, item.output) for item in self._chat_ctx.items if isinstance(item, llm.FunctionCallOutput)
            ),
            reply=reply,
        )
        self._fake.calls.append(call)
        request_id = f"fake-{call.index}"

        try:
            if reply.ttft_s:
                await asyncio.sleep(reply.ttft_s)
            if reply.error is not None:
                call.error = reply.error
                raise reply.error

            # word-sized chunks keep the trailing whitespace so the joined text is exact
            for n, piece in enumerate(re.findall(r"\s*\S+\s*", reply.text)):
                if n > 0 and reply.token_interval_s:
                    await asyncio.sleep(reply.token_interval_s)
                self._send(
                    call,
                    llm.ChatChunk(
                        id=request_id,
                        delta=llm.ChoiceDelta(role="assistant", content=piece),
                    ),
                )

            if reply.tool_calls:
                self._send(
                    call,
                    llm.ChatChunk(
                        id=request_id,
                        delta=llm.ChoiceDelta(
                            role="assistant",
                            tool_calls=[
                                llm.FunctionToolCall(
                                    name=name,
                                    arguments=json.dumps(dict(arguments)),
                                    call_id=f"call_{call.index}_{i}",
                                )
                                for i, (name, arguments) in enumerate(reply.tool_calls)
                            ],
                        ),
                    ),
                )

            prompt_tokens = sum(len(m.text.split()) for m in call.messages)
            completion_tokens = len(reply.text.split()) + len(reply.tool_calls)
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id,
                    usage=llm.CompletionUsage(
                        completion_tokens=completion_tokens,
                        prompt_tokens=prompt_tokens,
                        total_tokens=prompt_tokens + completion_tokens,
                    ),
                )
            )
        finally:
            call.finished_at = time.time()

    def _send(self, call: LLMCall, chunk: llm.ChatChunk) -> None:
        if call.first_chunk_at is None:
            call.first_chunk_at = time.time()
        self._event_ch.send_nowait(chunk)
