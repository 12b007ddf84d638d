"""The config's limits on a live call: maximum call duration, and the silence timeout with its reminders
and closing message.

`CallLimits` watches an `AgentSession` and, when a limit is reached, calls the worker's
`on_end(reason)` with the platform's `SessionTerminationReason` value (`max_call_duration`,
`silence_timeout`); the worker owns the hang-up itself.

Silence means: the caller is not speaking and the agent is neither thinking nor speaking. The clock
restarts whenever either side does something, so a slow LLM turn or a long agent answer never counts as
caller silence. After `silence_timeout_ms` of it the agent gives a reminder (up to `silence_reminder_count`
times in a row; the count starts over when the caller speaks or a user message arrives): `silence_reminder_message`
word for word, or with `silence_reminder_mode: auto` one the LLM writes (pipelines/silence_reminder.py). The next
timeout ends the call, after `silence_end_message` when `silence_end_action` is `speak_then_hangup`.
A `silence_timeout_ms` of 0 or null turns the silence timeout off; a static reminder without a message means
no reminders.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.agents import AgentSession, llm
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    ConversationItemAddedEvent,
    UserStateChangedEvent,
)

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.silence_reminder import remind, reminds

log = logging.getLogger("voice_worker.pipelines.call_limits")

MAX_CALL_DURATION = "max_call_duration"
SILENCE_TIMEOUT = "silence_timeout"

OnEnd = Callable[[str], Awaitable[None] | None]

# the agent is busy with the caller; its own silence then is not the caller's
_AGENT_BUSY = frozenset({"thinking", "speaking"})


class CallLimits:
    """`CallLimits(session, config, on_end=...).start()` right after `await session.start(...)`."""

    def __init__(self, session: AgentSession[Any], config: VoicePipelineConfig, *, on_end: OnEnd) -> None:
        self._session = session
        self._on_end = on_end
        self._max_duration_s = config.max_call_duration_ms / 1000 if config.max_call_duration_ms else None
        self._silence_s = config.silence_timeout_ms / 1000 if config.silence_timeout_ms else None
        self._config = config
        self._reminder_count = config.silence_reminder_count if reminds(config) else 0
        self._end_message = config.silence_end_message if config.silence_end_action == "speak_then_hangup" else None
        self._reminders_sent = 0
        # while our own reminder or closing message plays, the silence clock waits for it
        self._speaking_ours = False
        self._max_timer: asyncio.TimerHandle | None = None
        self._silence_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self.ended_reason: str | None = None

    @property
    def reminders_sent(self) -> int:
        return self._reminders_sent

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        if self._max_duration_s is not None:
            self._max_timer = loop.call_later(self._max_duration_s, self._end, MAX_CALL_DURATION)
        self._session.on("user_state_changed", self._on_user_state)
        self._session.on("agent_state_changed", self._on_agent_state)
        self._session.on("conversation_item_added", self._on_item)
        self._session.on("close", self._on_close)
        self._rearm()

    def stop(self) -> None:
        """Stop watching (the call ended some other way)."""
        if not self._started:
            return
        self._started = False
        self._cancel_timers()
        self._session.off("user_state_changed", self._on_user_state)
        self._session.off("agent_state_changed", self._on_agent_state)
        self._session.off("conversation_item_added", self._on_item)
        self._session.off("close", self._on_close)

    async def aclose(self) -> None:
        self.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- events ----------------------------------------------------------------------------------

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            self._reminders_sent = 0
        self._rearm()

    def _on_agent_state(self, ev: AgentStateChangedEvent) -> None:
        self._rearm()

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        # a typed or transcribed user message counts as the caller being back, even without VAD speech
        if isinstance(ev.item, llm.ChatMessage) and ev.item.role == "user":
            self._reminders_sent = 0
            self._rearm(restart=True)

    def _on_close(self, ev: CloseEvent) -> None:
        self.stop()

    # -- silence ---------------------------------------------------------------------------------

    def _silent(self) -> bool:
        return (
            self._session.user_state != "speaking"
            and self._session.agent_state not in _AGENT_BUSY
            and not self._speaking_ours
        )

    def _rearm(self, *, restart: bool = False) -> None:
        """Run the silence clock exactly while it is silent. A state change within silence (the
        session's own listening -> away after `user_away_timeout`) keeps the running clock."""
        silent = self._silence_s is not None and self.ended_reason is None and self._started and self._silent()
        if self._silence_timer is not None and (restart or not silent):
            self._silence_timer.cancel()
            self._silence_timer = None
        if silent and self._silence_timer is None:
            assert self._silence_s is not None
            self._silence_timer = asyncio.get_running_loop().call_later(self._silence_s, self._on_silence)

    def _on_silence(self) -> None:
        self._silence_timer = None
        if self.ended_reason is not None or not self._silent():
            return
        if self._reminders_sent < self._reminder_count:
            self._reminders_sent += 1
            # set before the task runs, so no state change in between restarts the clock
            self._speaking_ours = True
            self._spawn(self._say_reminder())
        elif self._end_message:
            self._speaking_ours = True
            self._spawn(self._say_then_end(self._end_message))
        else:
            self._end(SILENCE_TIMEOUT)

    async def _say_reminder(self) -> None:
        try:
            await remind(self._session, self._config)
        finally:
            self._speaking_ours = False
            self._rearm()

    async def _say_then_end(self, text: str) -> None:
        try:
            await self._session.say(text, allow_interruptions=False)
        finally:
            # a closing message that could not be spoken still ends the call
            self._speaking_ours = False
            self._end(SILENCE_TIMEOUT)

    # -- ending ----------------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        if self.ended_reason is not None:
            return
        self.ended_reason = reason
        self._cancel_timers()
        log.info("call limit reached: %s", reason)
        result = self._on_end(reason)
        if inspect.isawaitable(result):
            self._spawn(result)

    def _cancel_timers(self) -> None:
        for timer in (self._max_timer, self._silence_timer):
            if timer is not None:
                timer.cancel()
        self._max_timer = self._silence_timer = None

    def _spawn(self, aw: Awaitable[Any]) -> None:
        async def run() -> None:
            await aw

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call limit action failed", exc_info=task.exception())
