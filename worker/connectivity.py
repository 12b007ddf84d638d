"""Turning livekit's reconnect warnings into one line an operator can act on.

livekit-agents logs every failed attempt to reach the server with the exception attached. When nothing answers
at LIVEKIT_URL that is the expected state of a fresh laptop, so say what was tried and how to fix it, without
a traceback, and keep the worker retrying.
"""

from __future__ import annotations

import logging

_LIVEKIT_LOGGER = "livekit.agents"
_RETRY_PREFIX = "failed to connect to livekit"


class UnreachableLiveKitFilter(logging.Filter):
    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_RETRY_PREFIX):
            return True
        error = getattr(record, "error", None)
        delay = message.rsplit("retrying in ", 1)[-1] if "retrying in" in message else "a few seconds"
        record.msg = (
            f"cannot reach LiveKit at {self._url} ({type(error).__name__ if error else 'no answer'}); "
            "start a local server with `livekit-server --dev` (or `voice-worker dev`), or point LIVEKIT_URL, "
            f"LIVEKIT_API_KEY and LIVEKIT_API_SECRET at your LiveKit Cloud project; retrying in {delay}"
        )
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        # livekit attaches the exception object as an extra; a JSON formatter would print it in full.
        if hasattr(record, "error"):
            record.error = str(error)
        return True


def install(url: str) -> None:
    logging.getLogger(_LIVEKIT_LOGGER).addFilter(UnreachableLiveKitFilter(url))
