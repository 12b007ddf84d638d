"""Prometheus metrics of the door: minted calls and refusals by contract and status, and the /metrics route.

Its own registry, so an app built in a test (or two apps in one process) never collides with another's counters.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

_CONTRACTS = {"/v1/voice/web-call": "feather"}


def _contract(path: str) -> str | None:
    if path in _CONTRACTS:
        return _CONTRACTS[path]
    if path.startswith("/v1/agents/") and path.endswith("/web-call"):
        return "revdesk"
    return None


def install_metrics(app: FastAPI) -> CollectorRegistry:
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

    @app.middleware("http")
    async def count(request: Request, call_next):  # noqa: ANN001, ANN202 - Starlette's middleware signature
        contract = _contract(request.url.path)
        started = time.perf_counter()
        response = await call_next(request)
        if contract is not None:
            requests.labels(contract, str(response.status_code)).inc()
            latency.labels(contract).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
