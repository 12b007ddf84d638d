"""The post-call outbox delivery loop of the main worker process.

Job processes try each webhook once right after their call (worker/server.py); everything that failed, and
everything a job process could not send before it ended, is this loop's: it retries on the backoff schedule for
as long as the worker runs. It starts when the AgentServer has started and is stopped and flushed after the last
job has ended (worker/server.py `VoiceWorkerServer.aclose`), so the webhooks of calls that ended during the drain
are sent before the process exits. What still fails then stays queued in the database for the next start.

It also reads the backlog (queued entries) and the parked entries for the `voice_worker_postcall_outbox_backlog`
and `voice_worker_postcall_outbox_parked` gauges. Every read and write goes through the store (records/store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pipelines.http_clients import tls_context
from postcall.outbox import OutboxDelivery
from records.store import SessionStore
from telemetry import metrics
from worker.settings import Settings

log = logging.getLogger("voice_worker.outbox_loop")

# How often the backlog gauge is read; a count query, cheap at any backlog size.
BACKLOG_INTERVAL_S = 15.0


class OutboxLoop:
    def __init__(self, settings: Settings, *, backlog_interval_s: float = BACKLOG_INTERVAL_S) -> None:
        self._settings = settings
        self._backlog_interval_s = backlog_interval_s
        self._store: SessionStore | None = None
        self._delivery: OutboxDelivery | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    def start(self) -> None:
        """From inside the worker's event loop. Without a webhook URL nothing is ever queued: no loop."""
        if self._tasks or self._stopped or not self._settings.postcall_webhook_url:
            return
        settings = self._settings
        self._store = SessionStore.from_settings(settings)
        self._delivery = OutboxDelivery.from_settings(
            self._store,
            settings,
            verify=tls_context(),
            on_attempt=metrics.webhook_attempt,
            on_parked=metrics.webhook_parked,
        )
        assert self._delivery is not None
        self._tasks = [
            asyncio.create_task(self._delivery.run(), name="voice_worker_outbox_delivery"),
            asyncio.create_task(self._watch_backlog(), name="voice_worker_outbox_backlog"),
        ]
        log.info("post-call webhook delivery running in the main worker process")

    async def backlog(self) -> int:
        """Entries queued and not yet acknowledged (parked ones excluded); also sets both gauges."""
        assert self._store is not None
        counts = await self._store.outbox_counts()
        metrics.outbox_parked(counts["parked"])
        return counts["queued"]

    async def _watch_backlog(self) -> None:
        while True:
            try:
                metrics.outbox_backlog(await self.backlog())
            except Exception as exc:  # a database outage is the delivery loop's to report; keep reading
                log.debug("outbox backlog not readable: %s", type(exc).__name__)
            await asyncio.sleep(self._backlog_interval_s)

    async def stop_and_flush(self) -> int | None:
        """Stop the loop and try every due entry once more, within OUTBOX_FLUSH_TIMEOUT_S.

        Returns how many entries remain undelivered, or None when there was no loop. Never raises."""
        if self._stopped or self._delivery is None:
            self._stopped = True
            return None
        self._stopped = True
        delivery, store = self._delivery, self._store
        remaining: int | None = None
        try:
            remaining = await delivery.flush(self._settings.outbox_flush_timeout_s)
            metrics.outbox_backlog(remaining)
            if remaining:
                log.warning("%d session webhook(s) still undelivered at exit; they stay queued", remaining)
            else:
                log.info("post-call outbox flushed: nothing left to deliver")
        except Exception:
            log.exception("post-call outbox flush failed; undelivered webhooks stay queued")
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await delivery.aclose()
            if store is not None:
                await store.aclose()
        return remaining
