"""Serving the door with uvicorn: `serve(settings)` blocks until SIGINT/SIGTERM, then exits cleanly.

Two things uvicorn does not do on its own:
- Slow headers. uvicorn waits forever for a request's headers (its keep-alive timer stops at the first byte), so
  a client trickling them holds a connection indefinitely. `HeaderTimeoutProtocol` closes a connection whose
  headers are not complete `DOOR_HEADER_TIMEOUT_S` after its first byte (or after it opened). It is a timer on
  the event loop: no thread is held by a slow client, here or in the body timeout (door/limits.py).
- Exit status. After a graceful shutdown uvicorn re-raises the signal it caught, so SIGTERM ends the process
  with status -15 and an orchestrator records a failure. `DoorServer` finishes in-flight requests (up to
  `DOOR_SHUTDOWN_TIMEOUT_S`) and returns, so `voice-worker door` exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from door.app import create_app
from door.settings import DoorSettings

log = logging.getLogger("voice_worker.door")


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers take longer than `header_timeout_s`."""

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol's parameter is a BaseTransport; uvicorn's H11Protocol narrows it the same way
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as H11Protocol
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The first byte of the next request on a kept-alive connection starts its header clock.
        if self.conn.their_state is h11.IDLE and self._header_timer is None:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle between requests is uvicorn's keep-alive timeout; ours starts with the next request's first byte.
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.warning("closing a connection whose request headers took over %gs", self.header_timeout_s)
            self.transport.close()


def protocol_for(settings: DoorSettings) -> type[H11Protocol]:
    # A subclass per server, so two doors in one process (tests) keep their own timeout.
    return type("DoorH11Protocol", (HeaderTimeoutProtocol,), {"header_timeout_s": settings.door_header_timeout_s})


class DoorServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # The shutdown was graceful: do not re-raise the signal (uvicorn's default), exit normally.
            self._captured_signals.clear()


def build_server(settings: DoorSettings, app: FastAPI | None = None) -> uvicorn.Server:
    """A uvicorn server for the door on `DOOR_HOST:DOOR_PORT`, not yet started."""
    if app is None:
        app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.door_host,
        port=settings.door_port,
        # One process: state shared between replicas goes through the database (DOOR_SHARED_STATE).
        workers=1,
        http=protocol_for(settings),
        h11_max_incomplete_event_size=settings.door_max_header_bytes,
        timeout_graceful_shutdown=int(settings.door_shutdown_timeout_s) or 1,
        server_header=False,
        # Keep the process's logging set-up when the CLI made one (JSON in production); otherwise uvicorn's.
        log_config=None if logging.getLogger().handlers else uvicorn.config.LOGGING_CONFIG,
    )
    return DoorServer(config)


def serve(settings: DoorSettings) -> None:
    """Serve the door until SIGINT/SIGTERM. Raises `SettingsError` before binding when misconfigured."""
    build_server(settings).run()
