"""`voice-worker console`: a text conversation with a catalog agent, through the same call bootstrap as a job.

No room and no audio: the session gets only the LLM its pipeline names (the real provider, so the provider's
key must be set, or the pipeline must point at a local OpenAI-compatible server).

A provider that fails (no network, a wrong key, a local server that is not running) is what a newcomer meets
first, so a failed turn is one line naming the pipeline's models and what each said, and the conversation goes
on: the next line tries again. An empty line or Ctrl-D ends the call with exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

from livekit.agents import llm
from livekit.agents.testing import fake_job_context
from livekit.agents.voice import AgentSession
from livekit.agents.voice.events import ConversationItemAddedEvent, ErrorEvent
from livekit.agents.voice.run_result import ChatMessageEvent, RunResult

from calls.bootstrap import start_call
from calls.call import CallServices
from calls.state import CallState
from catalog.loader import CatalogStore
from catalog.pipeline_config import ModelChainEntry, VoicePipelineConfig
from contract.dispatch import DispatchRejected, DispatchRequest, mint_dispatch_metadata
from contract.session_type import SessionType
from worker.settings import Settings

EXIT_OK, EXIT_REFUSED = 0, 3
# A person at the terminal decides when to give up, not livekit's default of closing the session after three
# consecutive provider failures (which left every later line unanswered).
_CONSOLE_MAX_UNRECOVERABLE_ERRORS = 1_000_000
# Ctrl-C ends the call in order within this; a session still closing then is left to asyncio.run's cancellation
CTRL_C_GRACE_S = 5.0


def text_session_kwargs(settings: Settings) -> Callable[[VoicePipelineConfig], dict[str, Any]]:
    """Only the model chain: a text conversation needs no STT/TTS (nor their keys)."""
    from pipelines.builder import build_llm, session_connect_options

    def factory(config: VoicePipelineConfig) -> dict[str, Any]:
        conn_options = dataclasses.replace(
            session_connect_options(config), max_unrecoverable_errors=_CONSOLE_MAX_UNRECOVERABLE_ERRORS
        )
        return {"llm": build_llm(config, settings), "conn_options": conn_options}

    return factory


class ProviderFailures:
    """What the model chain said while one turn ran, so that a turn without a reply is explained in one line."""

    def __init__(self) -> None:
        self.chain: Sequence[ModelChainEntry] = ()
        self._members: list[llm.LLM[Any]] = []
        self._errors: dict[int, Exception] = {}
        self._failed: Exception | None = None

    def attach(self, session: AgentSession[Any]) -> None:
        session.on("error", self._on_session_error)
        session_llm = session.llm
        if isinstance(session_llm, llm.LLM):
            # a FallbackAdapter reports only "all LLMs failed"; its members say why
            members = getattr(session_llm, "members", None)
            self._members = list(members) if members else [session_llm]
            for index, member in enumerate(self._members):
                member.on("error", self._member_listener(index))

    def _member_listener(self, index: int) -> Callable[[llm.LLMError], None]:
        def listener(error: llm.LLMError) -> None:
            self._errors[index] = error.error

        return listener

    def _on_session_error(self, event: ErrorEvent) -> None:
        if getattr(event.error, "type", None) == "llm_error" and not getattr(event.error, "recoverable", True):
            self._failed = event.error.error

    def note(self, error: Exception) -> None:
        """`session.run()` raised: the turn failed whether or not an error event said so."""
        self._failed = self._failed or error

    def forget(self) -> None:
        """The turn was answered: a stream that failed beside the one that answered is not news here."""
        self._failed, self._errors = None, {}

    def take(self) -> str | None:
        """One line if the turn failed (naming each model and its error), None otherwise; starts the next turn."""
        failed, errors = self._failed, dict(self._errors)
        self.forget()
        if failed is None:
            return None
        tried = []
        for index, entry in enumerate(self.chain):
            where = f" at {urlsplit(entry.base_url).netloc or entry.base_url}" if entry.base_url else ""
            cause = errors.get(index)
            tried.append(f"{entry.provider} {entry.model}{where}" + (f" ({_describe(cause)})" if cause else ""))
        if not tried:
            tried.append(_describe(failed))
        elif not errors:
            tried[-1] += f" ({_describe(failed)})"
        return (
            f"no reply: the LLM failed: {', '.join(tried)}; {_fix_hint(self.chain)}. Type a message to try again; "
            "an empty line or Ctrl-D ends the call"
        )


def _describe(error: BaseException) -> str:
    """The error's type and first line, with its cause when livekit wrapped it (the cause is the useful part)."""
    text = next(iter(str(error).strip().splitlines()), "")
    cause = error.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text = f"{text} {type(cause).__name__}: {next(iter(str(cause).strip().splitlines()))}".strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _fix_hint(chain: Sequence[ModelChainEntry]) -> str:
    from pipelines.providers import PROVIDERS

    keys = sorted({PROVIDERS[e.provider].key_env for e in chain if e.provider in PROVIDERS and not e.base_url})
    local = sorted({e.base_url for e in chain if e.base_url})
    hints = []
    if keys:
        hints.append(f"check {' / '.join(keys)} and that the provider answers from this machine")
    if local:
        hints.append(f"check that a server answers at {', '.join(local)}")
    return "; ".join(hints) or "check the pipeline's model_chain"


async def run_console(
    settings: Settings,
    *,
    agent_id: uuid.UUID | None,
    team_id: uuid.UUID | None,
    seeds: dict[str, Any],
    services: CallServices | None = None,
    lines: asyncio.Queue[str | None] | None = None,
    err: TextIO | None = None,
) -> int:
    err = err or sys.stderr
    metadata = mint_dispatch_metadata(
        DispatchRequest(
            session_id=uuid.uuid4(),
            session_type=SessionType.TEST,
            agent_id=agent_id,
            team_id=team_id,
            context_variables=seeds if agent_id else None,
        ),
        secret=settings.signing_secret(),
        issuer=settings.dispatch_issuer,
    )
    services = services or CallServices(
        settings=settings,
        catalog=CatalogStore(settings.catalog_path),
        session_kwargs=text_session_kwargs(settings),
        text_only=True,
    )
    failures = ProviderFailures()

    def report() -> None:
        line = failures.take()
        if line is not None:
            print(f"voice-worker: {line}", file=err, flush=True)

    with fake_job_context(job_metadata=metadata, job_id=f"console-{uuid.uuid4().hex[:8]}"):

        def show(event: ConversationItemAddedEvent) -> None:
            item = event.item
            if isinstance(item, llm.ChatMessage) and item.role == "assistant" and item.text_content:
                print(f"agent> {item.text_content}", flush=True)

        def before_start(session: AgentSession[CallState]) -> None:
            session.on("conversation_item_added", show)
            failures.attach(session)

        try:
            call = await start_call(_current_job_context(), services, room=None, before_start=before_start)
        except DispatchRejected as exc:
            print(f"voice-worker: refused: {exc.reason}: {exc.detail}", file=err)
            return EXIT_REFUSED
        failures.chain = call.admission.pipeline.model_chain
        report()  # a greeting the LLM had to write may have failed already
        print("(type a message; an empty line or Ctrl-D ends the call)", file=err)
        queue = lines or _stdin_lines()
        try:
            while True:
                line = await queue.get()
                if not line:
                    break
                try:
                    result: RunResult[None] = await call.session.run(user_input=line)
                except Exception as exc:  # any provider error leaves the conversation usable
                    failures.note(exc)
                else:
                    if any(isinstance(e, ChatMessageEvent) and e.item.role == "assistant" for e in result.events):
                        failures.forget()
                report()
        except asyncio.CancelledError:
            # Ctrl-C (asyncio.run cancels this task): end the call as Ctrl-D does, so the session stops its own
            # tasks (a failed model chain's recovery attempts among them) before asyncio.run cancels whatever is
            # left; bounded, because the operator is leaving
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.finish(reason="user_requested"), CTRL_C_GRACE_S)
            raise
        await call.finish(reason="user_requested")
    return EXIT_OK


def _current_job_context() -> Any:
    from livekit.agents import get_job_context

    return get_job_context()


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines typed at the terminal; None at end of input (Ctrl-D).

    A daemon thread, not the loop's executor: at Ctrl-C asyncio.run waits for executor threads, and this one
    sits in a blocking read of the terminal that nothing can interrupt."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def reader() -> None:
        try:
            for raw in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, raw.rstrip("\n"))
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:  # the loop closed (the call ended) while a line was being typed
            return

    threading.Thread(target=reader, name="console-stdin", daemon=True).start()
    return queue
