"""A web service for api_call tools to call: records every request as it arrived, answers by script.

`ToolApi()` serves on 127.0.0.1; `api.answer(path, responder)` sets what a path answers (a callable taking the
aiohttp request, sync or async, returning a `web.StreamResponse`); unscripted paths echo the request back as
JSON. `api.requests` holds what arrived, raw path and all, so a test sees exactly what went over the wire.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.doubles.loopback_server import LoopbackServer

Responder = Callable[[web.Request], "web.StreamResponse | Awaitable[web.StreamResponse]"]


@dataclass
class ArrivedRequest:
    method: str
    raw_path: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    json: Any = field(default=None)


class ToolApi(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ArrivedRequest] = []
        self._answers: dict[str, Responder] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, responder: Responder) -> None:
        self._answers[path] = responder

    def hits(self, path: str) -> list[ArrivedRequest]:
        return [r for r in self.requests if r.path == path]

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        arrived = ArrivedRequest(
            method=request.method,
            raw_path=request.raw_path,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            json=parsed,
        )
        self.requests.append(arrived)
        responder = self._answers.get(request.path)
        if responder is None:
            return web.json_response(
                {"method": arrived.method, "raw_path": arrived.raw_path, "query": arrived.query, "json": parsed}
            )
        produced = responder(request)
        if inspect.isawaitable(produced):
            produced = await produced
        return produced
