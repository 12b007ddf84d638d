"""The door under hostile input (issue #16): limits before parsing, every refusal in its contract's shape, slow
clients cut off without a thread, bounded memory under oversized bodies, JSON logs without secrets, and a clean
exit on SIGTERM. The first part runs the app in-process; the rest runs a real `voice-worker door` process.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from catalog.loader import CatalogStore
from door.app import create_app
from tests.doubles.door_process import DoorProcess, start_door
from tests.doubles.door_sessions import RecordingSessionCreator
from tests.doubles.door_world import (
    ALL_SECRETS,
    KEY_ALL,
    SALES_AGENT,
    SUPPORT_AGENT,
    feather_headers,
    make_settings,
    revdesk_headers,
    revdesk_path,
)

FEATHER = "/v1/voice/web-call"


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as client:
        yield client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(tmp_path), session_creator=RecordingSessionCreator())
    async for c in _client(app):
        yield c


def _feather(seeds: dict[str, Any] | None = None, agent: uuid.UUID = SUPPORT_AGENT) -> dict[str, Any]:
    return {"agent_id": str(agent), "context_variables": seeds}


def _envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
    return dict(body["error"])


def _detail(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"}, body
    return body["detail"]


# --- 1. limits ---------------------------------------------------------------------------------------------


async def test_a_huge_declared_body_is_413_in_each_contract_without_being_read(client: httpx.AsyncClient) -> None:
    reads: list[int] = []

    async def fifty_megabytes() -> AsyncIterator[bytes]:
        for _ in range(50 * 16):
            reads.append(1)
            yield b"x" * 65_536

    headers = {**feather_headers(), "content-type": "application/json", "content-length": str(50 * 2**20)}
    feather = await client.post(FEATHER, content=fifty_megabytes(), headers=headers)
    assert "16384 bytes" in _detail(feather, 413)
    assert feather.headers["connection"] == "close"
    assert reads == []  # refused on the declared length alone

    revdesk = await client.post(
        revdesk_path(SUPPORT_AGENT), content=b"{}" + b" " * 20_000, headers={**revdesk_headers(), **headers}
    )
    _envelope(revdesk, 413, "payload_too_large")


async def test_a_chunked_body_is_cut_off_at_the_limit(client: httpx.AsyncClient) -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"agent_id": "' + str(SUPPORT_AGENT).encode() + b'", "context_variables": {"customer_name": "'
        for _ in range(1000):
            sent.append(4096)
            yield b"x" * 4096

    response = await client.post(FEATHER, content=endless(), headers=feather_headers())
    _detail(response, 413)
    assert sum(sent) < 64 * 1024  # stopped reading right after the limit, not at the end of the stream


async def test_context_variables_have_bounds(client: httpx.AsyncClient) -> None:
    huge_int = await client.post(
        FEATHER, json=_feather({"order_count": 99999999999999999999999}), headers=feather_headers()
    )
    [error] = _detail(huge_int, 422)
    assert error["loc"] == ["body", "context_variables", "order_count"] and "out of range" in error["msg"]

    long_text = await client.post(FEATHER, json=_feather({"customer_name": "D" * 2000}), headers=feather_headers())
    [error] = _detail(long_text, 422)
    assert "at most 1024 characters" in error["msg"] and len(long_text.content) < 1000  # never echoed back

    too_many = await client.post(FEATHER, json=_feather({f"v{i}": 1 for i in range(65)}), headers=feather_headers())
    [error] = _detail(too_many, 422)
    assert error["loc"] == ["body", "context_variables"] and "at most 64" in error["msg"]


async def test_seeds_that_would_make_the_token_too_large_are_refused(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, DOOR_MAX_TOKEN_BYTES=2048), session_creator=RecordingSessionCreator())
    async for client in _client(app):
        fits = await client.post(FEATHER, json=_feather({"customer_name": "Dana"}), headers=feather_headers())
        assert fits.status_code == 200 and len(fits.json()["access_token"]) <= 2048
        big = await client.post(FEATHER, json=_feather({"customer_name": "D" * 1000}), headers=feather_headers())
        [error] = _detail(big, 422)
        assert "2048 bytes" in error["msg"] and error["loc"] == ["body", "context_variables"]


async def test_header_sizes_are_limited_and_worded_in_characters(client: httpx.AsyncClient) -> None:
    long_key = await client.post(FEATHER, json=_feather(), headers=feather_headers("k" * 5000))
    assert "longer than 256 characters" in _detail(long_key, 401)
    bearer = await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers("k" * 5000))
    _envelope(bearer, 401, "unauthorized")

    idem = await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="i" * 300))
    error = _envelope(idem, 400, "validation_error")
    assert error["fields"]["Idempotency-Key"] == "is 300 characters long; it must be 1 to 255 characters"
    assert "items" not in idem.text


async def test_limits_are_documented_in_the_openapi_document(tmp_path: Path) -> None:
    app = create_app(
        make_settings(tmp_path, DOOR_IDEMPOTENCY_KEY_MAX_CHARS=64), session_creator=RecordingSessionCreator()
    )
    async for client in _client(app):
        schema = (await client.get("/openapi.json")).json()
    revdesk = schema["paths"]["/v1/agents/{id}/web-call"]["post"]
    feather = schema["paths"][FEATHER]["post"]
    assert {"400", "401", "403", "404", "405", "408", "409", "413", "415", "429", "500", "503"} <= set(
        revdesk["responses"]
    )
    assert {"400", "408", "413", "422", "429", "500"} <= set(feather["responses"])
    [idem] = [p for p in revdesk["parameters"] if p["name"] == "Idempotency-Key"]
    assert (idem["schema"]["minLength"], idem["schema"]["maxLength"]) == (1, 64)
    assert "DOOR_MAX_BODY_BYTES" in schema["info"]["description"] and "DOOR_MAX_TOKEN_BYTES" in feather["description"]


# --- 2. every refusal in its contract's shape ----------------------------------------------------------------


async def test_revdesk_refusals_from_outside_the_route_use_its_envelope(client: httpx.AsyncClient) -> None:
    wrong_method = await client.put(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())
    _envelope(wrong_method, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["allow"]
    _envelope(await client.get(revdesk_path(SUPPORT_AGENT)), 405, "method_not_allowed")
    _envelope(await client.post(f"/v1/agents/{SUPPORT_AGENT}/web-calls"), 404, "not_found")
    not_json = await client.post(
        revdesk_path(SUPPORT_AGENT), content=b"hello", headers={**revdesk_headers(), "content-type": "text/plain"}
    )
    _envelope(not_json, 415, "unsupported_media_type")
    assert (await client.post(revdesk_path(SUPPORT_AGENT), json={}, headers=revdesk_headers())).status_code == 200

    assert isinstance(_detail(await client.get(FEATHER), 405), str)


class ExplodingCatalog(CatalogStore):
    def get(self) -> Any:
        raise RuntimeError("postgresql://door:hunter2@db/voice is down")


async def test_an_unexpected_failure_is_a_500_in_each_shape_and_leaks_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = create_app(
        settings, catalog_store=ExplodingCatalog(settings.catalog_path), session_creator=RecordingSessionCreator()
    )
    async for client in _client(app):
        revdesk = await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())
        feather = await client.post(FEATHER, json=_feather(), headers=feather_headers())
    _envelope(revdesk, 500, "internal_error")
    assert isinstance(_detail(feather, 500), str)
    assert "hunter2" not in revdesk.text + feather.text


# --- 3. slow clients and memory, against a real door process -------------------------------------------------


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoorProcess]:
    # One process for the slow-client and memory tests: starting a door takes seconds on a loaded machine.
    process = start_door(tmp_path_factory.mktemp("door"), DOOR_HEADER_TIMEOUT_S=1, DOOR_BODY_TIMEOUT_S=1)
    try:
        yield process
    finally:
        process.terminate()


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `sock` within `seconds`, and what it sent before closing."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65_536):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_slowloris_headers_and_bodies_are_cut_off_without_threads(door: DoorProcess) -> None:
    threads_before = door.threads()
    slow: list[socket.socket] = []
    for i in range(40):
        sock = socket.create_connection(("127.0.0.1", door.port))
        if i % 2:
            sock.sendall(b"POST /v1/voice/web-call HTTP/1.1\r\nHost: door\r\nX-Slow: ")  # headers never finish
        else:
            head = f"POST /v1/voice/web-call HTTP/1.1\r\nHost: door\r\nx-api-key: {KEY_ALL}\r\n"
            head += "content-type: application/json\r\ncontent-length: 100\r\n\r\n{"
            sock.sendall(head.encode())  # body never finishes
        slow.append(sock)
    time.sleep(0.3)
    # Meanwhile the door answers others at once, and no thread was spent on the slow ones.
    started = time.monotonic()
    assert httpx.post(f"{door.url}{FEATHER}", json=_feather(), headers=feather_headers(), timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0
    assert door.threads() <= threads_before + 2  # the session store's worker thread may start on the first call

    for i, sock in enumerate(slow):
        closed, received = _closed_within(sock, 5.0)
        assert closed, f"slow client {i} was not cut off"
        if i % 2 == 0:
            assert received.startswith(b"HTTP/1.1 408") and b'"detail"' in received
        sock.close()


def test_fifty_clients_sending_oversized_bodies_do_not_grow_memory(door: DoorProcess) -> None:
    # Warm the door (first call imports and opens the store), then measure.
    assert httpx.post(f"{door.url}{FEATHER}", json=_feather(), headers=feather_headers(), timeout=10).status_code == 200
    baseline = door.rss_bytes()
    peak = baseline
    per_client = 20 * 2**20  # 1 GB in all: what the door would hold if it buffered bodies

    async def oversized(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
        path = FEATHER if i % 2 else revdesk_path(SUPPORT_AGENT)
        auth = f"x-api-key: {KEY_ALL}" if i % 2 else f"Authorization: Bearer {KEY_ALL}"
        framing = "transfer-encoding: chunked" if i % 4 < 2 else f"content-length: {per_client}"
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: door\r\n{auth}\r\n"
            f"content-type: application/json\r\n{framing}\r\n\r\n".encode()
        )
        answer = b""
        if "content-length" in framing:
            # Refused on the declared length alone: the answer comes before any body byte is sent.
            answer = await asyncio.wait_for(reader.read(4096), timeout=10)
        chunk = b"x" * 65_536
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if "chunked" in framing else chunk
        try:
            # Then push the whole body anyway, as an abusive client would (the door has hung up: the kernel
            # resets the connection, which also discards an unread answer, so only the metrics count those).
            for _ in range(per_client // len(chunk)):
                writer.write(framed)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
        return answer

    async def run_all() -> list[bytes]:
        nonlocal peak
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, door.rss_bytes())
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        try:
            return await asyncio.gather(*(oversized(i) for i in range(50)))
        finally:
            done.set()
            await sampler

    answers = asyncio.run(run_all())
    declared = [a for i, a in enumerate(answers) if i % 4 >= 2]
    assert len(declared) == 24 and all(a.startswith(b"HTTP/1.1 413") for a in declared), [a[:40] for a in declared]
    growth = f"RSS {baseline / 2**20:.1f} MiB before, {peak / 2**20:.1f} MiB at the peak"
    print(growth)  # the README's figure (pytest -s)
    assert peak - baseline < 30 * 2**20, growth
    assert httpx.post(f"{door.url}{FEATHER}", json=_feather(), headers=feather_headers(), timeout=5).status_code == 200
    metrics = httpx.get(f"{door.url}/metrics").text
    refused = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("voice_worker_door_requests_total") and 'status="413"' in line
    )
    assert refused == 50


# --- 4. JSON logs without secrets ----------------------------------------------------------------------------


def test_every_log_line_is_json_and_no_secret_appears(tmp_path: Path) -> None:
    door = start_door(tmp_path)
    presented_wrong_key = "vwd_wrong-key-presented-by-a-caller-0123456789"
    try:
        call = httpx.post(f"{door.url}{FEATHER}", json=_feather({"customer_name": "Dana"}), headers=feather_headers())
        assert call.status_code == 200
        revdesk = httpx.post(f"{door.url}{revdesk_path(SALES_AGENT)}", headers=revdesk_headers(idempotency_key="k1"))
        assert revdesk.status_code == 200
        refusals = [
            httpx.post(f"{door.url}{FEATHER}", json=_feather(), headers=feather_headers(presented_wrong_key)),
            httpx.post(f"{door.url}{revdesk_path(SUPPORT_AGENT)}", headers=revdesk_headers(presented_wrong_key)),
            httpx.post(f"{door.url}{FEATHER}", json=_feather({"order_count": "many"}), headers=feather_headers()),
            httpx.put(f"{door.url}{revdesk_path(SUPPORT_AGENT)}", headers=revdesk_headers()),
            httpx.post(f"{door.url}{FEATHER}", content=b"x" * 20_000, headers=feather_headers()),
        ]
        assert [r.status_code for r in refusals] == [401, 401, 422, 405, 413]
    finally:
        assert door.terminate() == 0
    lines = door.log_lines()
    assert len(lines) >= 8, lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line, uvicorn's included, is one JSON object
        assert {"level", "logger", "message"} <= set(record), record
        records.append(record)
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.access", "uvicorn.error", "voice_worker.door"} <= loggers, loggers
    minted = [r for r in records if r["message"].startswith("web call minted")]
    assert minted and all(r["session_id"] for r in minted)
    assert any(
        r.get("session_id") == call.json()["session_id"] and r.get("agent_id") == str(SUPPORT_AGENT) for r in minted
    )

    text = "\n".join(lines)
    tokens = (call.json()["access_token"], revdesk.json()["data"]["token"])
    for secret in (*ALL_SECRETS, presented_wrong_key, *tokens):
        assert secret not in text


# --- SIGTERM (issue #17) -------------------------------------------------------------------------------------


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    door = start_door(tmp_path)
    body = json.dumps(_feather()).encode()
    sock = socket.create_connection(("127.0.0.1", door.port))
    head = f"POST {FEATHER} HTTP/1.1\r\nHost: door\r\nx-api-key: {KEY_ALL}\r\ncontent-type: application/json\r\n"
    sock.sendall(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body[:10])
    time.sleep(0.3)  # the request is in flight: its handler waits for the rest of the body
    door.process.send_signal(15)
    time.sleep(0.5)
    assert door.process.poll() is None, "the door exited with a request in flight"
    sock.sendall(body[10:])
    _, received = _closed_within(sock, 10.0)
    sock.close()
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["session_id"]
    assert door.terminate() == 0
