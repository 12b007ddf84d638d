"""The lifecycle every aiohttp test double shares: serve an app on 127.0.0.1, a free port, async-with."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web


class LoopbackServer:
    """Subclasses build their app in `_build_app()` and release their own state in `_before_cleanup()`."""

    shutdown_timeout: float = 2.0

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def _build_app(self) -> web.Application:
        raise TypeError(f"{type(self).__name__} must define _build_app()")

    async def _before_cleanup(self) -> None:
        """Close what would otherwise make the runner wait (open websockets, parked handlers)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self._build_app(), access_log=None, shutdown_timeout=self.shutdown_timeout, handle_signals=False
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]

    async def aclose(self) -> None:
        await self._before_cleanup()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # The provider doubles' tests say close(); the LiveKit double's say aclose().
    close = aclose

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port
