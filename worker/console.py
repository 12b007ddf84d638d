"""`voice-worker console`: a text conversation with a catalog agent, through the same call bootstrap as a job.

No room and no audio: the session gets only the LLM its pipeline names (the real provider, so the provider's
key must be set, or the pipeline must point at a local OpenAI-compatible server).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

from livekit.agents import llm
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.events import ConversationItemAddedEvent

from catalog.loader import CatalogStore
from worker.call import CallServices, start_call
from worker.dispatch import DispatchRejected, DispatchRequest, mint_dispatch_metadata
from worker.settings import Settings


def text_session_kwargs(settings: Settings):  # noqa: ANN201 - a SessionFactory
    """Only the model chain: a text conversation needs no STT/TTS (nor their keys)."""
    from pipelines.builder import build_llm, session_connect_options

    def factory(config):  # noqa: ANN001, ANN202
        return {"llm": build_llm(config, settings), "conn_options": session_connect_options(config)}

    return factory


async def run_console(
    settings: Settings,
    *,
    agent_id: uuid.UUID | None,
    team_id: uuid.UUID | None,
    seeds: dict[str, Any],
    services: CallServices | None = None,
    lines: asyncio.Queue[str | None] | None = None,
) -> int:
    metadata = mint_dispatch_metadata(
        DispatchRequest(
            session_id=uuid.uuid4(),
            session_type="test",
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
    with fake_job_context(job_metadata=metadata, job_id=f"console-{uuid.uuid4().hex[:8]}"):

        def show(event: ConversationItemAddedEvent) -> None:
            item = event.item
            if isinstance(item, llm.ChatMessage) and item.role == "assistant" and item.text_content:
                print(f"agent> {item.text_content}", flush=True)

        try:
            call = await start_call(
                _current_job_context(), services, room=None, before_start=lambda s: s.on("conversation_item_added", show)
            )
        except DispatchRejected as exc:
            print(f"refused: {exc.reason}: {exc.detail}", file=sys.stderr)
            return 3
        print("(type a message; an empty line or Ctrl-D ends the call)", file=sys.stderr)
        queue = lines or _stdin_lines()
        while True:
            line = await queue.get()
            if not line:
                break
            await call.session.run(user_input=line)
        await call.finish(reason="user_requested")
    return 0


def _current_job_context():  # noqa: ANN202
    from livekit.agents import get_job_context

    return get_job_context()


def _stdin_lines() -> asyncio.Queue[str | None]:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def reader() -> None:
        for raw in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, raw.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    loop.run_in_executor(None, reader)
    return queue
