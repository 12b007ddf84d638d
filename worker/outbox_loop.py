"""The post-call outbox delivery loop of the main worker process.

Job processes try each webhook once right after their call (worker/server.py); everything that failed, and
everything a job process could not send before it ended, is this loop's: it retries on the backoff schedule for
as long as the worker runs. It starts when the AgentServer has started and is stopped and flushed after the last
job has ended (worker/server.py `VoiceWorkerServer.aclose`), so the webhooks of calls that ended during the drain
are sent before the process exits. What still fails then stays queued in the database for the next start.

It also reads the backlog (undelivered entries) for the `voice_worker_postcall_outbox_backlog` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from postcall.outbox import OutboxDelivery
from records.engine import create_engine
from records.schema import outbox
from records.store import SessionStore
from worker import metrics
from worker.settings import Settings

log = logging.getLogger("voice_worker.outbox_loop")

# How often the backlog gauge is read; a count query, cheap at any backlog size.
BACKLOG_INTERVAL_S = 15.0


class OutboxLoop:
    def __init__(self, settings: Settings, *, backlog_interval_s: float = BACKLOG_INTERVAL_S) -> None:
        self._settings = settings
        self._backlog_interval_s = backlog_interval_s
        self._engine: Engine | None = None
        self._store: SessionStore | None = None
        self._delivery: OutboxDelivery | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopped

    def start(self) -> None:
        """From inside the worker's event loop. Without a webhook URL nothing is ever queued: no loop."""
        if self._tasks or self._stopped or not self._settings.postcall_webhook_url:
            return
        settings = self._settings
        self._engine = create_engine(settings.database_url)
        self._store = SessionStore(
            settings.database_url, retention_days=settings.memory_retention_days, engine=self._engine
        )
        self._delivery = OutboxDelivery.from_settings(self._store, settings, on_attempt=metrics.webhook_attempt)
        assert self._delivery is not None
        self._tasks = [
            asyncio.create_task(self._delivery.run(), name="voice_worker_outbox_delivery"),
            asyncio.create_task(self._watch_backlog(), name="voice_worker_outbox_backlog"),
        ]
        log.info("post-call webhook delivery running in the main worker process")

    async def backlog(self) -> int:
        engine = self._engine
        assert engine is not None

        def count() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.select(sa.func.count()).select_from(outbox).where(outbox.c.delivered_at.is_(None))
                    ).scalar_one()
                )

        return await asyncio.to_thread(count)

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
        delivery, store, engine = self._delivery, self._store, self._engine
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
            elif engine is not None:
                engine.dispose()
        return remaining
