"""Per-API-key token buckets: a key may burst its whole minute at once, then refills evenly.

State lives in this process (one replica); door/shared_state.py keeps the same buckets in the database.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self._capacity = float(per_minute)
        self._refill_per_s = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        # Handlers run on the event loop, but a sync caller in a worker thread must not double-spend a token.
        self._lock = threading.Lock()

    async def acquire_async(self, key: str) -> int | None:
        return self.acquire(key)

    def acquire(self, key: str) -> int | None:
        """Spend one token of `key`: None when allowed, else the whole seconds to wait (Retry-After)."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=self._capacity, updated=now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self._capacity, bucket.tokens + elapsed * self._refill_per_s)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - bucket.tokens) / self._refill_per_s))
