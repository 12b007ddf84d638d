"""GET /metrics on PROMETHEUS_PORT, for Prometheus: `telemetry.metrics.exposition()` (voice_worker_* and livekit's
lk_agents_*, from the main process and every job process).

The worker serves this itself instead of livekit's `AgentServer(prometheus_port=...)`: livekit's handler reads
the multiprocess files without a lock, so a scrape could see the files of an ended job process half folded into
the archive (telemetry/metrics.py `fold_ended_processes`). Between scrapes the endpoint folds those files every
FOLD_INTERVAL_S, so the directory stays small when nothing scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from telemetry import metrics
from worker.http_endpoint import HttpEndpoint

log = logging.getLogger("voice_worker.metrics")

# A job process lives for one call (minutes): folding its files within a minute of its end keeps the directory
# at about the size of the calls in progress.
FOLD_INTERVAL_S = 60.0


class MetricsEndpoint:
    def __init__(self, host: str, port: int, *, fold_interval_s: float = FOLD_INTERVAL_S) -> None:
        self._server = HttpEndpoint(host, port)
        self._server.app.add_routes([web.get("/metrics", self._metrics)])
        self._fold_interval_s = fold_interval_s
        self._folding: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the system chose for 0) once started."""
        return self._server.port

    async def start(self) -> None:
        await self._server.start()
        self._folding = asyncio.create_task(self._fold_periodically(), name="voice_worker.metrics.fold")
        log.info("Prometheus metrics at http://%s:%d/metrics", self._server.host or "0.0.0.0", self.port)

    async def aclose(self) -> None:
        if self._folding is not None:
            self._folding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._folding
            self._folding = None
        await self._server.aclose()

    async def _fold_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._fold_interval_s)
            try:
                # file work under the scrape lock: off the event loop
                await loop.run_in_executor(None, metrics.fold_ended_processes)
            except Exception:  # a bad file must not end the folding for the worker's lifetime
                log.exception("folding the metrics of ended job processes failed")

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
