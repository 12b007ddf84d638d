"""Webhook delivery from the outbox: signed POSTs, retried with backoff until a 2xx acknowledges them.

All delivery state lives in the database, so a restarted worker (or another worker sharing PostgreSQL)
resumes where this one stopped. An entry is leased while it is being sent: claiming it counts the
attempt and pushes its due time past the request timeout, so two loops never send it at once. After a
2xx it is marked delivered and never sent again; if the process dies between the 2xx and that mark, the
entry is sent once more with the same `Idempotency-Key`, which is what the key is for.

Retry delay after the n-th failed attempt: uniformly random between half and all of
min(retry_max_s, retry_base_s * 2**(n-1)), raised to a numeric Retry-After when the receiver sends one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from postcall.payload import encode_body
from postcall.signing import signed_headers
from records.record import OutboxItem
from records.store import SessionStore

logger = logging.getLogger("voice_worker.outbox")

ATTEMPT_HEADER = "X-Voice-Worker-Delivery-Attempt"

# Told about every delivery attempt: (attempt number for that entry, counting from 1; acknowledged or not).
AttemptObserver = Callable[[int, bool], None]


class OutboxConfigError(ValueError):
    """The webhook is configured incompletely; the message names the environment variable."""


@dataclass(frozen=True)
class DrainResult:
    attempted: int = 0
    delivered: int = 0


def retry_delay(attempts: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    ceiling = min(max_s, base_s * 2 ** max(attempts - 1, 0))
    return rng.uniform(ceiling / 2, ceiling)


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


class OutboxDelivery:
    def __init__(
        self,
        store: SessionStore,
        url: str,
        secret: str | SecretStr,
        *,
        retry_base_s: float = 2.0,
        retry_max_s: float = 300.0,
        request_timeout_s: float = 10.0,
        batch_size: int = 20,
        poll_interval_s: float = 5.0,
        lease_s: float | None = None,
        client: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        on_attempt: AttemptObserver | None = None,
    ) -> None:
        raw_secret = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if not url:
            raise OutboxConfigError("POSTCALL_WEBHOOK_URL is not set")
        if not raw_secret:
            raise OutboxConfigError("POSTCALL_WEBHOOK_SECRET is not set; webhooks are never sent unsigned")
        if retry_base_s <= 0 or retry_max_s < retry_base_s:
            raise ValueError("need 0 < retry_base_s <= retry_max_s")
        self._store = store
        self._url = url
        self._secret = raw_secret.encode("utf-8")
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._request_timeout_s = request_timeout_s
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._lease = timedelta(seconds=lease_s if lease_s is not None else request_timeout_s + 30.0)
        self._client = client or httpx.AsyncClient(timeout=request_timeout_s, follow_redirects=False)
        self._owns_client = client is None
        self._rng = rng or random.Random()
        self._on_attempt = on_attempt
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    @classmethod
    def from_settings(cls, store: SessionStore, settings: Any, **kwargs: Any) -> OutboxDelivery | None:
        """None when no webhook URL is configured (nothing is queued then either)."""
        if not settings.postcall_webhook_url:
            return None
        return cls(
            store,
            settings.postcall_webhook_url,
            settings.postcall_webhook_secret or "",
            retry_base_s=settings.outbox_retry_base_s,
            retry_max_s=settings.outbox_retry_max_s,
            **kwargs,
        )

    def notify(self) -> None:
        """Something was queued: deliver now instead of at the next poll."""
        self._wake.set()

    def _redact(self, text: str) -> str:
        # the URL may carry credentials (user:password@ or a token in the query)
        return text.replace(self._url, "<webhook-url>")

    async def _deliver(self, item: OutboxItem) -> bool:
        body = encode_body(item.payload)
        headers = signed_headers(
            self._secret, body, idempotency_key=str(item.session_id), timestamp=int(time.time())
        )
        headers[ATTEMPT_HEADER] = str(item.attempts)
        retry_after: float | None = None
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            error = self._redact(f"{type(exc).__name__}: {exc}".strip().rstrip(":"))
        else:
            if 200 <= response.status_code < 300:
                await self._store.mark_outbox_delivered(item.id, at=self._store.now())
                logger.info(
                    "session %s: webhook delivered (attempt %d)",
                    item.session_id,
                    item.attempts,
                    extra={"session_id": str(item.session_id)},
                )
                self._observe(item.attempts, delivered=True)
                return True
            error = f"HTTP {response.status_code}"
            retry_after = _retry_after_s(response)

        delay = retry_delay(item.attempts, base_s=self._retry_base_s, max_s=self._retry_max_s, rng=self._rng)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self._retry_max_s)
        await self._store.mark_outbox_failed(
            item.id, error=error, next_attempt_at=self._store.now() + timedelta(seconds=delay)
        )
        self._observe(item.attempts, delivered=False)
        logger.warning(
            "session %s: webhook attempt %d failed (%s); retrying in %.1f s",
            item.session_id,
            item.attempts,
            error,
            delay,
            extra={"session_id": str(item.session_id)},
        )
        return False

    def _observe(self, attempt: int, *, delivered: bool) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(attempt, delivered)
        except Exception:  # counting must never stop a delivery
            logger.exception("outbox attempt observer failed")

    async def drain_once(self) -> DrainResult:
        """One attempt at every entry due now (up to the batch size)."""
        items = await self._store.claim_due_outbox(
            now=self._store.now(), limit=self._batch_size, lease=self._lease
        )
        delivered = 0
        for item in items:
            if await self._deliver(item):
                delivered += 1
        return DrainResult(attempted=len(items), delivered=delivered)

    async def _sleep_until_due(self) -> None:
        delay = self._poll_interval_s
        due = await self._store.next_outbox_due_at()
        if due is not None:
            delay = min(max((due - self._store.now()).total_seconds(), 0.0), self._poll_interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def run(self) -> None:
        """Deliver until `stop()` or `flush()`; database or network trouble is logged and retried."""
        self._stopping = False
        self._idle.clear()
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    result = await self.drain_once()
                    if result.attempted >= self._batch_size:
                        continue
                    await self._sleep_until_due()
                except Exception:
                    logger.exception("outbox delivery loop error; retrying after the poll interval")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
        finally:
            self._idle.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def flush(self, timeout: float) -> int:
        """For shutdown: stop the loop, then try everything due once more, within `timeout` seconds.
        Returns how many entries remain undelivered (0: all acknowledged); they stay queued for the next start."""
        self.stop()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
                while True:
                    result = await self.drain_once()
                    # a failure means the receiver is struggling: leave the rest to the backoff schedule
                    if result.attempted == 0 or result.delivered < result.attempted:
                        break
        except TimeoutError:
            logger.warning("outbox flush timed out; undelivered entries stay queued")
        return len(await self._store.undelivered_outbox())

    async def aclose(self) -> None:
        self.stop()
        if self._owns_client:
            await self._client.aclose()
