"""Webhook delivery from the outbox: signed POSTs, retried with backoff until a 2xx acknowledges them, parked
(dead-lettered) when that does not happen within a bounded number of attempts or time.

All delivery state lives in the database, so a restarted worker (or another worker sharing PostgreSQL)
resumes where this one stopped. An entry is leased while it is being sent: claiming it counts the attempt and
pushes its due time `lease_s` ahead; the lease is renewed every `lease_s / 3` while the request is in flight, so
two senders never send it at once, and a sender that dies (kill -9) leaves it to the next one at most `lease_s`
later. The attempt count is the claim's fencing token: a sender that lost its lease cannot reschedule or park
an entry another sender holds. After a 2xx it is marked delivered and never sent again.

Delivery is at least once (docs/webhooks.md). A receiver sees the same record more than once, always with the
same `Idempotency-Key` (the session id), when: it answers after `request_timeout_s` (the attempt counts as
failed and is retried: at most `max_attempts` requests in all), or the sender dies between the 2xx and marking
the entry delivered (one more request). Receivers must deduplicate on the key.

Retry delay after the n-th failed attempt: uniformly random between half and all of
min(retry_max_s, retry_base_s * 2**(n-1)), raised to a numeric Retry-After when the receiver sends one. The entry
is parked instead when the attempt that failed was its `max_attempts`-th, or it is older than `max_age_s`:
a warning names it, `on_parked` is told (the worker's metric), `voice-worker outbox resend ID` sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

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
# Told about every entry parked.
ParkObserver = Callable[[], None]
# What one attempt came to: acknowledged, failed (retried on the backoff schedule), or failed and parked.
Outcome = Literal["delivered", "failed", "parked"]

DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_MAX_ATTEMPTS = 25
DEFAULT_MAX_AGE_S = 86_400.0
DEFAULT_LEASE_S = 5.0


class OutboxConfigError(ValueError):
    """The webhook is configured incompletely; the message names the environment variable."""


@dataclass(frozen=True)
class DrainResult:
    attempted: int = 0
    delivered: int = 0
    parked: int = 0


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
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        batch_size: int = 20,
        poll_interval_s: float = 5.0,
        lease_s: float = DEFAULT_LEASE_S,
        client: httpx.AsyncClient | None = None,
        verify: ssl.SSLContext | bool = True,
        rng: random.Random | None = None,
        on_attempt: AttemptObserver | None = None,
        on_parked: ParkObserver | None = None,
    ) -> None:
        raw_secret = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if not url:
            raise OutboxConfigError("POSTCALL_WEBHOOK_URL is not set")
        if not raw_secret:
            raise OutboxConfigError("POSTCALL_WEBHOOK_SECRET is not set; webhooks are never sent unsigned")
        if retry_base_s <= 0 or retry_max_s < retry_base_s:
            raise ValueError("need 0 < retry_base_s <= retry_max_s")
        if request_timeout_s <= 0 or lease_s <= 0 or max_attempts < 1 or max_age_s <= 0:
            raise ValueError("need request_timeout_s, lease_s, max_age_s > 0 and max_attempts >= 1")
        self._store = store
        self._url = url
        self._secret = raw_secret.encode("utf-8")
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._request_timeout_s = request_timeout_s
        self._max_attempts = max_attempts
        self._max_age = timedelta(seconds=max_age_s)
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._lease = timedelta(seconds=lease_s)
        # three renewals per lease: one lost write (a slow database) does not lose the lease
        self._renew_every_s = lease_s / 3
        # `verify`: the process's one TLS context (pipelines/http_clients.py); a context of its own loads the CA
        # bundle again, 50-80 ms of the setup every worker start waits for
        self._client = client or httpx.AsyncClient(verify=verify, timeout=request_timeout_s, follow_redirects=False)
        self._owns_client = client is None
        self._rng = rng or random.Random()
        self._on_attempt = on_attempt
        self._on_parked = on_parked
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
            request_timeout_s=settings.outbox_request_timeout_s,
            max_attempts=settings.outbox_max_attempts,
            max_age_s=settings.outbox_max_age_s,
            lease_s=settings.outbox_lease_s,
            **kwargs,
        )

    def notify(self) -> None:
        """Something was queued: deliver now instead of at the next poll."""
        self._wake.set()

    def _redact(self, text: str) -> str:
        # the URL may carry credentials (user:password@ or a token in the query)
        return text.replace(self._url, "<webhook-url>")

    async def _post(self, item: OutboxItem, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """The request, bounded by `request_timeout_s` in all (httpx's own timeout is per read, so a receiver
        trickling bytes could hold it longer), with the entry's lease renewed while it is in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout_s
        request = asyncio.ensure_future(self._client.post(self._url, content=body, headers=headers))
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({request}, timeout=min(self._renew_every_s, remaining))
                if done:
                    return request.result()
                await self._renew(item)
        finally:
            if not request.done():
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await request

    async def _renew(self, item: OutboxItem) -> None:
        try:
            kept = await self._store.renew_outbox_lease(
                item.id, attempts=item.attempts, until=self._store.now() + self._lease
            )
        except Exception as exc:  # the request goes on; the next renewal may get through
            logger.warning("session %s: webhook lease not renewed (%s)", item.session_id, type(exc).__name__)
            return
        if not kept:
            logger.warning(
                "session %s: webhook lease lost during attempt %d (another sender may send it too)",
                item.session_id,
                item.attempts,
                extra={"session_id": str(item.session_id)},
            )

    async def _deliver(self, item: OutboxItem) -> Outcome:
        """One attempt: "delivered", "failed" (retried later) or "parked"."""
        body = encode_body(item.payload)
        headers = signed_headers(self._secret, body, idempotency_key=str(item.session_id), timestamp=int(time.time()))
        headers[ATTEMPT_HEADER] = str(item.attempts)
        retry_after: float | None = None
        try:
            response = await self._post(item, body, headers)
        except (httpx.TimeoutException, TimeoutError):
            error = f"no answer within {self._request_timeout_s:g} s"
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
                return "delivered"
            error = f"HTTP {response.status_code}"
            retry_after = _retry_after_s(response)

        self._observe(item.attempts, delivered=False)
        now = self._store.now()
        if item.attempts >= self._max_attempts or now - item.created_at >= self._max_age:
            return await self._park(item, error, now)
        delay = retry_delay(item.attempts, base_s=self._retry_base_s, max_s=self._retry_max_s, rng=self._rng)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self._retry_max_s)
        await self._store.mark_outbox_failed(
            item.id, error=error, next_attempt_at=now + timedelta(seconds=delay), attempts=item.attempts
        )
        logger.warning(
            "session %s: webhook attempt %d failed (%s); retrying in %.1f s",
            item.session_id,
            item.attempts,
            error,
            delay,
            extra={"session_id": str(item.session_id)},
        )
        return "failed"

    async def _park(self, item: OutboxItem, error: str, now: datetime) -> Outcome:
        if not await self._store.park_outbox(item.id, attempts=item.attempts, error=error, at=now):
            return "failed"  # another sender holds it now: its attempt decides
        age_s = (now - item.created_at).total_seconds()
        logger.error(
            "session %s: webhook parked after %d attempt(s) over %.0f s (last: %s); "
            "`voice-worker outbox resend %d` sends it again",
            item.session_id,
            item.attempts,
            age_s,
            error,
            item.id,
            extra={"session_id": str(item.session_id)},
        )
        if self._on_parked is not None:
            try:
                self._on_parked()
            except Exception:  # counting must never stop a delivery
                logger.exception("outbox park observer failed")
        return "parked"

    def _observe(self, attempt: int, *, delivered: bool) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(attempt, delivered)
        except Exception:  # counting must never stop a delivery
            logger.exception("outbox attempt observer failed")

    async def drain_once(self) -> DrainResult:
        """One attempt at every entry due now (up to the batch size)."""
        # One claim per entry, just before its request: a batch claimed at once would see the leases of its last
        # entries run out while the first ones are being sent, and another sender take them.
        # Due by the start of this pass: an entry that failed in it (and is due again after a short backoff) waits
        # for the next pass.
        outcomes: list[Outcome] = []
        start = self._store.now()
        for _ in range(self._batch_size):
            items = await self._store.claim_due_outbox(now=self._store.now(), due_by=start, limit=1, lease=self._lease)
            if not items:
                break
            outcomes.append(await self._deliver(items[0]))
        return DrainResult(
            attempted=len(outcomes), delivered=outcomes.count("delivered"), parked=outcomes.count("parked")
        )

    async def deliver_entry(self, entry_id: int) -> Outcome | None:
        """One attempt at that entry now (`voice-worker outbox resend`): its outcome, or None when it is not
        queued and due (unknown, delivered, parked, or in another sender's hands)."""
        item = await self._store.claim_outbox_entry(entry_id, now=self._store.now(), lease=self._lease)
        return None if item is None else await self._deliver(item)

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
