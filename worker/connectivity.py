"""What livekit's log lines about the link to LiveKit mean: one line an operator can act on, and readiness.

livekit-agents logs every failed attempt to reach the server with the exception attached. When nothing answers
at LIVEKIT_URL that is the expected state of a fresh laptop, so say what was tried and how to fix it, without
a traceback, and keep the worker retrying. The same warning marks the moment a registered worker loses the link,
which readiness needs to know (`ConnectionWatch`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

_LIVEKIT_LOGGER = "livekit.agents"
_RETRY_PREFIX = "failed to connect to livekit"


# livekit retries every 10 s for ever (max_retry is unbounded, see worker/server.py): a line per attempt is 360
# lines an hour of the same news. Say it on the first failure, then on the 4th, 8th, 16th ... attempt, and at
# least every REPEAT_AT_LEAST_S so a long outage still shows in recent logs.
REPEAT_AT_LEAST_S = 600.0
_REGISTERED = "registered worker"
_WORKER_FAILED = "worker failed"
_failure: str | None = None


class UnreachableLiveKitFilter(logging.Filter):
    def __init__(self, url: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._url = url
        self._clock = clock
        self._failures = 0
        self._last_shown = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message == _WORKER_FAILED:
            _note_failure(record)
            return True
        if message.startswith(_REGISTERED):
            self._failures = 0  # a later outage is news again
            return True
        if not message.startswith(_RETRY_PREFIX):
            return True
        self._failures += 1
        now = self._clock()
        first = self._failures == 1
        power_of_two = self._failures >= 4 and self._failures & (self._failures - 1) == 0
        if not (first or power_of_two or now - self._last_shown >= REPEAT_AT_LEAST_S):
            return False
        self._last_shown = now
        error = getattr(record, "error", None)
        delay = message.rsplit("retrying in ", 1)[-1] if "retrying in" in message else "a few seconds"
        cause = type(error).__name__ if error else "no answer"
        if first:
            record.msg = (
                f"cannot reach LiveKit at {self._url} ({cause}); "
                "start a local server with `livekit-server --dev` (or `voice-worker dev`), or point LIVEKIT_URL, "
                "LIVEKIT_API_KEY and LIVEKIT_API_SECRET at your LiveKit Cloud project; the worker keeps retrying"
            )
        else:
            record.msg = (
                f"still cannot reach LiveKit at {self._url} ({cause}) after {self._failures} attempts; "
                f"retrying every few seconds, next in {delay}"
            )
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        # livekit attaches the exception object as an extra; a JSON formatter would print it in full.
        if hasattr(record, "error"):
            record.error = str(error)
        return True


def _note_failure(record: logging.LogRecord) -> None:
    """livekit's CLI logs "worker failed" with a traceback and then exits 0 (livekit/agents/cli/cli.py). Keep the
    cause as one line, so the log says what stopped the worker and `voice-worker start|dev` exits non-zero."""
    global _failure
    error = record.exc_info[1] if record.exc_info else None
    first = next(iter(str(error).strip().splitlines()), "") if error is not None else ""
    _failure = f"{type(error).__name__}: {first}" if error is not None and first else type(error).__name__
    record.msg = f"the worker stopped: {_failure}"
    record.args = ()
    record.exc_info = None
    record.exc_text = None


def worker_failure() -> str | None:
    """Why the worker stopped, if livekit's CLI reported it failed in this process; None otherwise."""
    return _failure


def install(url: str) -> None:
    logging.getLogger(_LIVEKIT_LOGGER).addFilter(UnreachableLiveKitFilter(url))


class ConnectionWatch(logging.Filter):
    """Whether this worker's link to LiveKit is up, for readiness: up at livekit's `worker_registered` event (which
    it emits on every registration, reconnections included), down at the warning livekit logs the moment the link
    drops or an attempt to open it fails ("failed to connect to livekit, retrying in ..."). No public livekit API
    reports the drop itself; that warning is the one observable sign (tests/test_worker_readiness.py drops the
    link and fails if the watch stops seeing it). It sees the record before UnreachableLiveKitFilter rewrites or
    drops it, so `install()` puts it first."""

    def __init__(self) -> None:
        super().__init__()
        self.registered_once = False
        self.up = False
        self.losses = 0

    def registered(self) -> None:
        self.registered_once = self.up = True

    def filter(self, record: logging.LogRecord) -> bool:
        if self.up and record.getMessage().startswith(_RETRY_PREFIX):
            self.up = False
            self.losses += 1
        return True

    def install(self) -> None:
        livekit = logging.getLogger(_LIVEKIT_LOGGER)
        if self not in livekit.filters:
            livekit.filters.insert(0, self)
        if not livekit.isEnabledFor(logging.WARNING):
            logging.getLogger("voice_worker.server").warning(
                "livekit's log level is above WARNING: readiness cannot see the LiveKit link drop"
            )

    def remove(self) -> None:
        logging.getLogger(_LIVEKIT_LOGGER).removeFilter(self)
