"""Idempotency keys: a repeated request gets the stored response instead of a second call.

Entries are scoped by the API key that made the request, so one client can never replay (and read the join
token of) another client's response. Only successful responses are stored: a refused request may be retried
with the same key once the cause is fixed. One asyncio lock per key serialises concurrent requests that
share a key, so parallel retries create one session and the rest replay it.

State lives in this process (one door replica; door/shared_state.py has the database version for several);
entries expire `ttl_s` after they were stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_MAX_ENTRIES = 100_000


class IdempotencyConflict(Exception):
    """The key was already used for a different request."""


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: Any


@dataclass(frozen=True)
class _Entry:
    fingerprint: str
    response: StoredResponse
    expires_at: float


class Idempotency(Protocol):
    async def run(
        self, scope: str, key: str, fingerprint: str, produce: Callable[[], Awaitable[StoredResponse]]
    ) -> tuple[StoredResponse, bool]: ...


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class IdempotencyStore:
    def __init__(
        self,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        # Insertion order is expiry order (one TTL for all), so expired entries are always at the front.
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def in_flight(self, scope: str, key: str) -> int:
        """Requests holding or waiting for `key`'s lock right now (for metrics and tests)."""
        return self._locks.get((scope, key), (None, 0))[1]

    def _purge(self, now: float) -> None:
        while self._entries:
            first_key = next(iter(self._entries))
            if self._entries[first_key].expires_at > now:
                break
            del self._entries[first_key]

    def _lock_for(self, slot: tuple[str, str]) -> asyncio.Lock:
        lock, users = self._locks.get(slot, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[slot] = (lock, users + 1)
        return lock

    def _release(self, slot: tuple[str, str]) -> None:
        lock, users = self._locks[slot]
        if users <= 1:
            del self._locks[slot]
        else:
            self._locks[slot] = (lock, users - 1)

    async def run(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        produce: Callable[[], Awaitable[StoredResponse]],
    ) -> tuple[StoredResponse, bool]:
        """`(response, replayed)`: the stored response for a repeat, else whatever `produce()` returns.

        Raises `IdempotencyConflict` when `key` was used for a request with another fingerprint.
        """
        slot = (scope, key)
        lock = self._lock_for(slot)
        try:
            async with lock:
                now = self._clock()
                self._purge(now)
                entry = self._entries.get(slot)
                if entry is not None:
                    if entry.fingerprint != fingerprint:
                        raise IdempotencyConflict
                    return entry.response, True
                response = await produce()
                if 200 <= response.status_code < 300:
                    self._entries[slot] = _Entry(fingerprint, response, self._clock() + self._ttl_s)
                    while len(self._entries) > self._max_entries:
                        self._entries.popitem(last=False)
                return response, False
        finally:
            self._release(slot)
