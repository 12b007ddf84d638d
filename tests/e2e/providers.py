"""The provider doubles as real servers for processes outside pytest: OpenAI-compatible chat and speech,
Deepgram streaming listen and speak, and the post-call webhook receiver, all on one event loop in a thread.

The worker under test is a separate process: it reaches these over HTTP and websockets exactly as it would
reach api.openai.com or api.deepgram.com (tests/e2e/catalog.py points the catalog's chains at them). The loop
runs in its own thread so that sync and async tests, and module-scoped fixtures, can all share the doubles.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from tests.doubles.deepgram_server import DeepgramServerDouble
from tests.doubles.openai_server import OpenAIServerDouble
from tests.doubles.webhook_receiver import WebhookReceiver

T = TypeVar("T")


class ProviderDoubles:
    def __init__(self, *, webhook_secret: str, tts_seconds_per_char: float = 0.06) -> None:
        self.openai = OpenAIServerDouble(speech_seconds_per_char=tts_seconds_per_char)
        # Deepgram finalises at every pause longer than livekit's 25 ms endpointing, so one spoken question is
        # several finals: the scripted text is the first, the rest are empty (as Deepgram answers for breath
        # and noise) instead of the double's default word.
        self.deepgram = DeepgramServerDouble(tts_seconds_per_char=tts_seconds_per_char, default_transcript="")
        self.webhook = WebhookReceiver(secret=webhook_secret)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="provider-doubles", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        await self.openai.start()
        await self.deepgram.start()
        await self.webhook.start()

    def stop(self) -> None:
        async def stop_all() -> None:
            await self.openai.aclose()
            await self.deepgram.aclose()
            await self.webhook.stop()

        self.run(stop_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coro` on the doubles' loop and wait for its result (from any thread, sync code)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """The same from a test's own event loop, without blocking it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def call(self, fn: Callable[[], T]) -> T:
        """Call a scripting method of a double on its own loop (the doubles are not thread-safe)."""

        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())
