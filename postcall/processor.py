"""Post-call processing: record the outcome, summarise, sync memory, queue the webhook. Never raises.

The worker schedules `process(outcome)` after the session has closed, so nothing here delays the caller.
Order matters for what survives a failure:
1. the outcome (transcript, metrics, usage, end reason) is recorded first, on its own;
2. summary and memory extraction each run under `postcall_step_timeout_s`; a failure is noted, not raised;
3. one transaction writes the post-call fields, merges the end user's facts and queues the webhook.
A test or simulation session (by the type stored on the record) runs neither model nor memory
write: both states are `suppressed`. Cancellation (worker shutdown) is not swallowed; what was recorded
in step 1 stays, with states still `pending`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from livekit.agents import llm

from postcall.memory import MemoryExtractor
from postcall.payload import webhook_payload
from postcall.summary import summarize
from records.outcome import MemoryState, SessionOutcome, SummaryState
from records.record import SessionRecord
from records.store import PostcallResult, SessionStore

logger = logging.getLogger("voice_worker.postcall")

T = TypeVar("T")

# `summary_llm_factory(outcome)` returns a fresh model for this call's summary (it is closed afterwards),
# or None when no summary model is configured for the agent.
LLMFactory = Callable[[SessionOutcome], llm.LLM[Any] | None]

_MAX_STEP_ERROR_CHARS = 500


class PostcallSettings(Protocol):
    postcall_step_timeout_s: float
    postcall_webhook_url: str | None
    memory_fact_cap: int
    memory_min_user_turns: int


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described[:_MAX_STEP_ERROR_CHARS]


class PostCallProcessor:
    def __init__(
        self,
        store: SessionStore,
        settings: PostcallSettings,
        summary_llm_factory: LLMFactory | None,
        memory_extractor: MemoryExtractor | None,
        *,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._timeout_s = settings.postcall_step_timeout_s
        self._fact_cap = settings.memory_fact_cap
        self._min_user_turns = settings.memory_min_user_turns
        self._webhook = bool(settings.postcall_webhook_url)
        self._summary_llm_factory = summary_llm_factory
        self._memory_extractor = memory_extractor
        self._on_enqueued = on_enqueued

    async def _step(
        self, session_id: object, name: str, errors: list[str], work: Callable[[], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        try:
            async with asyncio.timeout(self._timeout_s):
                return True, await work()
        except TimeoutError:
            errors.append(f"{name}: timed out after {self._timeout_s:g} s")
        except Exception as exc:
            errors.append(f"{name}: {_describe(exc)}")
        logger.warning("session %s: post-call step failed: %s", session_id, errors[-1])
        return False, None

    async def process(self, outcome: SessionOutcome) -> SessionRecord | None:
        """Returns the finished record, or None when not even the outcome could be stored (logged)."""
        errors: list[str] = []
        ok, record = await self._step(outcome.session_id, "record", errors, lambda: self._store.complete(outcome))
        if not ok or record is None:
            logger.error("session %s: outcome could not be recorded: %s", outcome.session_id, errors[-1])
            return None

        if record.session_type.suppresses_postcall:
            result = PostcallResult(
                summary=None, summary_state=SummaryState.SUPPRESSED, memory_state=MemoryState.SUPPRESSED
            )
        else:
            summary, summary_state = await self._summary(outcome, errors)
            memory_state, new_facts = await self._memory(outcome, record, errors)
            result = PostcallResult(
                summary=summary,
                summary_state=summary_state,
                memory_state=memory_state,
                postcall_error="; ".join(errors) or None,
                new_facts=new_facts,
            )
        return await self._finish(outcome, result)

    async def _summary(self, outcome: SessionOutcome, errors: list[str]) -> tuple[str | None, SummaryState]:
        instructions = (outcome.summary_instructions or "").strip()
        if not instructions or not outcome.transcript or self._summary_llm_factory is None:
            return None, SummaryState.SKIPPED
        factory = self._summary_llm_factory

        async def run() -> str | None:
            model = factory(outcome)
            if model is None:
                return None
            try:
                return await summarize(model, instructions, outcome.transcript)
            finally:
                await model.aclose()

        ok, summary = await self._step(outcome.session_id, "summary", errors, run)
        if not ok:
            return None, SummaryState.FAILED
        return (summary, SummaryState.COMPLETED) if summary is not None else (None, SummaryState.SKIPPED)

    async def _memory(
        self, outcome: SessionOutcome, record: SessionRecord, errors: list[str]
    ) -> tuple[MemoryState, list[str] | None]:
        end_user_id = record.end_user_id
        if end_user_id is None or outcome.user_turns < self._min_user_turns or self._memory_extractor is None:
            return MemoryState.SKIPPED, None
        extractor = self._memory_extractor

        async def run() -> list[str]:
            known = await self._store.facts_for(end_user_id)
            return await extractor.extract(outcome, known)

        ok, facts = await self._step(outcome.session_id, "memory", errors, run)
        if not ok or facts is None:
            return MemoryState.PENDING, None
        return MemoryState.SYNCED, facts

    async def _finish(self, outcome: SessionOutcome, result: PostcallResult) -> SessionRecord | None:
        payload = webhook_payload if self._webhook else None
        errors: list[str] = []
        ok, record = await self._step(
            outcome.session_id,
            "finish",
            errors,
            lambda: self._store.finish_postcall(
                outcome.session_id, result, fact_cap=self._fact_cap, webhook_payload=payload
            ),
        )
        if not ok:
            # The memory merge is the only part with real failure modes of its own; record the rest without it.
            fallback_errors = [e for e in [result.postcall_error, *errors] if e]
            fallback = PostcallResult(
                summary=result.summary,
                summary_state=result.summary_state,
                memory_state=MemoryState.PENDING if result.new_facts is not None else result.memory_state,
                postcall_error="; ".join(fallback_errors),
            )
            ok, record = await self._step(
                outcome.session_id,
                "finish-fallback",
                errors,
                lambda: self._store.finish_postcall(
                    outcome.session_id, fallback, fact_cap=self._fact_cap, webhook_payload=payload
                ),
            )
            if not ok:
                logger.error("session %s: post-call results could not be recorded: %s", outcome.session_id, errors[-1])
                return None
        if payload is not None and self._on_enqueued is not None:
            self._on_enqueued()
        return record
