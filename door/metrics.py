"""Prometheus metrics of the door: minted calls and refusals by contract and status, and the /metrics route.

Its own registry, so an app built in a test (or two apps in one process) never collides with another's counters.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CONTRACTS = {"/v1/voice/web-call": "feather"}


def _contract(path: str) -> str | None:
    if path in _CONTRACTS:
        return _CONTRACTS[path]
    if path.startswith("/v1/agents/") and path.endswith("/web-call"):
        return "revdesk"
    return None


def install_metrics(app: FastAPI) -> CollectorRegistry:
    """Counters, the /metrics route and the middleware that feeds them (install it last: it sees every refusal)."""
    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "voice_worker_door_requests",
        "Web-call requests answered by the door, by contract and HTTP status",
        ["contract", "status"],
        registry=registry,
    )
    latency = Histogram(
        "voice_worker_door_request_seconds",
        "Time to answer a web-call request",
        ["contract"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        registry=registry,
    )

    # A pure ASGI middleware: Starlette's BaseHTTPMiddleware (`@app.middleware`) costs a task and a stream per
    # request, and wraps errors raised while the body is read (door/limits.py's 413) into exception groups.
    class Count:
        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            contract = _contract(scope["path"]) if scope["type"] == "http" else None
            if contract is None:
                await self.inner(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def observed_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await self.inner(scope, receive, observed_send)
            finally:
                requests.labels(contract, str(status)).inc()
                latency.labels(contract).observe(time.perf_counter() - started)

    app.add_middleware(Count)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
