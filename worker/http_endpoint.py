"""A small aiohttp server the worker's main process owns (health and readiness, metrics): started and closed with
the worker, its bound port known once started (port 0 lets the system choose, as the tests do)."""

from __future__ import annotations

from aiohttp import web

# A probe or a scrape is short; closing the worker must not wait aiohttp's 60 s default for a stuck client.
SHUTDOWN_TIMEOUT_S = 1.0


class HttpEndpoint:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._port = port
        self.app = web.Application()
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the one asked for, or the one the system chose for 0)."""
        return self._port

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        await web.TCPSite(runner, self.host or None, self._port).start()
        self._runner = runner
        if self._port == 0 and runner.addresses:
            self._port = int(runner.addresses[0][1])

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
