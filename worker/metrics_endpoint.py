"""GET /metrics on PROMETHEUS_PORT, for Prometheus: `worker.metrics.exposition()` (voice_worker_* and livekit's
lk_agents_*, from the main process and every job process).

The worker serves this itself instead of livekit's `AgentServer(prometheus_port=...)`: livekit's handler reads
the multiprocess files without a lock, so a scrape could see the files of an ended job process half folded into
the archive (telemetry/metrics.py `process_exited`).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from livekit.agents.utils.http_server import HttpServer
from prometheus_client import CONTENT_TYPE_LATEST

from telemetry import metrics

log = logging.getLogger("voice_worker.metrics")


class MetricsEndpoint:
    def __init__(self, host: str, port: int) -> None:
        self._server = HttpServer(host, port)
        self._server.app.add_routes([web.get("/metrics", self._metrics)])

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the system chose for 0) once started."""
        return self._server.port

    async def start(self) -> None:
        await self._server.start()
        log.info("Prometheus metrics at http://%s:%d/metrics", self._server.host or "0.0.0.0", self.port)

    async def aclose(self) -> None:
        await self._server.aclose()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
