"""Readiness on the health port: `GET /ready` answers 200 only once the worker is registered with LiveKit and
503 again while the link to LiveKit is down, while livekit's `GET /` (liveness) and `GET /worker`, relayed on the
same port, stay OK. The real AgentServer, against the LiveKit protocol double and against a port where nothing
listens."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from tests.doubles.livekit_server import LiveKitServerDouble
from tests.ports import free_port
from worker.server import VoiceWorkerServer, create_server
from worker.settings import Settings

API_KEY, API_SECRET = "devkey", "readiness-test-livekit-secret-0123456789ab"
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def restore_environ() -> Iterator[None]:
    # AgentServer.run() exports LIVEKIT_URL/API_KEY/API_SECRET into os.environ
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def _server(livekit_url: str) -> VoiceWorkerServer:
    settings = Settings(
        _env_file=None,
        VOICE_WORKER_MODE="dev",
        LIVEKIT_URL=livekit_url,
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        HEALTH_HOST="127.0.0.1",
        HEALTH_PORT=0,
    )
    # no idle job processes: readiness is the main process's business
    return create_server(settings, num_idle_processes=0)


async def _get(server: VoiceWorkerServer, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.health.port}{path}") as response,
    ):
        return response.status, await response.text()


async def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@pytest.fixture
async def running() -> AsyncIterator[tuple[VoiceWorkerServer, LiveKitServerDouble]]:
    async with LiveKitServerDouble(api_key=API_KEY, api_secret=API_SECRET) as lk:
        server = _server(lk.url)
        task = asyncio.create_task(server.run(devmode=True))
        try:
            yield server, lk
        finally:
            await asyncio.wait_for(server.aclose(), TIMEOUT)
            await asyncio.wait_for(task, TIMEOUT)


async def test_ready_once_registered(running: tuple[VoiceWorkerServer, LiveKitServerDouble]) -> None:
    server, lk = running
    registration = await lk.wait_registered(timeout=TIMEOUT)
    await _until(lambda: server.readiness() is None, "readiness after registration")
    assert await _get(server, "/ready") == (200, "ready")
    assert await _get(server, "/") == (200, "OK")
    status, info = await _get(server, "/worker")
    assert status == 200 and json.loads(info)["agent_name"] == registration.agent_name


async def test_not_ready_while_the_link_to_livekit_is_down(
    running: tuple[VoiceWorkerServer, LiveKitServerDouble],
) -> None:
    """livekit reports no drop through a public API: the watch (worker/connectivity.py ConnectionWatch) reads the
    warning livekit logs at that moment. If a livekit upgrade rewords it, this test fails."""
    server, lk = running
    await lk.wait_registered(timeout=TIMEOUT)
    await _until(lambda: server.readiness() is None, "readiness after registration")
    registrations = len(lk.registrations)
    await lk.drop_connection()
    await lk.wait_for(lambda: len(lk.registrations) > registrations, TIMEOUT)
    await _until(lambda: server.readiness() is None, "readiness after the worker registered again")
    assert server.connection.losses == 1


def test_readiness_names_why_not() -> None:
    server = _server("ws://127.0.0.1:1")
    assert server.readiness() == "not registered with LiveKit yet"
    server.connection.registered()
    assert server.readiness() is None
    message = "failed to connect to livekit, retrying in 2s"
    server.connection.filter(logging.LogRecord("livekit.agents", logging.WARNING, __file__, 1, message, (), None))
    assert server.readiness() == "reconnecting to LiveKit"
    server.connection.registered()
    assert server.readiness() is None


async def test_not_ready_while_livekit_is_unreachable_but_alive() -> None:
    server = _server(f"ws://127.0.0.1:{free_port()}")
    task = asyncio.create_task(server.run(devmode=True))
    try:
        await _until(lambda: server.worker_info.http_port != 0, "livekit's health server")
        await asyncio.sleep(0.5)  # a connection attempt or two have failed by now
        assert await _get(server, "/ready") == (503, "not registered with LiveKit yet")
        # liveness: the process is fine, it keeps retrying; restarting it would not help
        assert await _get(server, "/") == (200, "OK")
    finally:
        await asyncio.wait_for(server.aclose(), TIMEOUT)
        await asyncio.wait_for(task, TIMEOUT)
