"""The health port (HEALTH_PORT): livekit's liveness and worker info, and this worker's readiness.

- `GET /` and `GET /worker` are livekit's own (OK while the process is fine, 503 once it gave up on LiveKit or
  its inference process died; the worker's load as JSON), served by livekit's health server, which the worker
  binds to 127.0.0.1 on a port of the system's choosing (`AgentServer.worker_info.http_port`); this endpoint
  relays them unchanged, so probes and operators keep one port.
- `GET /ready`: 200 once registered with LiveKit, 503 with the reason while connecting or reconnecting, or
  draining. livekit's `GET /` stays OK while LiveKit is unreachable (the worker retries forever, so a restart
  would not help: right for liveness); readiness tells a rollout whether this pod really takes calls.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web

from worker.http_endpoint import HttpEndpoint

# livekit's health server listens on the loopback only: this endpoint is the one others reach.
LIVEKIT_HEALTH_HOST = "127.0.0.1"
RELAY_TIMEOUT_S = 2.0


class HealthEndpoint:
    def __init__(
        self, host: str, port: int, *, readiness: Callable[[], str | None], livekit_port: Callable[[], int]
    ) -> None:
        """`readiness()`: None when ready, else why not; `livekit_port()`: where livekit's health server listens
        (0 until it does)."""
        self._server = HttpEndpoint(host, port)
        self._server.app.add_routes(
            [web.get("/ready", self._ready), web.get("/", self._relay), web.get("/worker", self._relay)]
        )
        self._readiness = readiness
        self._livekit_port = livekit_port
        self._http: aiohttp.ClientSession | None = None

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RELAY_TIMEOUT_S))
        await self._server.start()

    async def aclose(self) -> None:
        await self._server.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _ready(self, _request: web.Request) -> web.Response:
        reason = self._readiness()
        return web.Response(text="ready") if reason is None else web.Response(status=503, text=reason)

    async def _relay(self, request: web.Request) -> web.Response:
        port = self._livekit_port()
        if not port or self._http is None:
            return web.Response(status=503, text="starting")
        try:
            async with self._http.get(f"http://{LIVEKIT_HEALTH_HOST}:{port}{request.path}") as answer:
                body = await answer.read()
                return web.Response(status=answer.status, body=body, content_type=answer.content_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # livekit's health server not answering is itself the news a liveness probe is for
            return web.Response(status=503, text=f"livekit's health server did not answer ({type(exc).__name__})")
