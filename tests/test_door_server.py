"""The door as it runs: uvicorn on a real socket (127.0.0.1), the default session store on SQLite, a blocking
session creator kept off the event loop, and the start-up refusals of `serve`.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from contract.settings import SettingsError
from door.app import create_app
from door.server import build_server, serve
from tests.doubles.door_sessions import RecordingSessionCreator, SyncRecordingSessionCreator
from tests.doubles.door_world import (
    FRONT_DESK_TEAM,
    SUPPORT_AGENT,
    feather_headers,
    make_settings,
    revdesk_headers,
    revdesk_path,
)
from tests.ports import free_port


def test_uvicorn_serves_the_door_on_a_real_socket(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(tmp_path, DOOR_HOST="127.0.0.1", DOOR_PORT=port)
    creator = RecordingSessionCreator()
    server = build_server(settings, create_app(settings, session_creator=creator))
    thread = threading.Thread(target=server.run, name="door-under-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20  # generous: only so a broken start fails instead of hanging
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            paths = client.get("/openapi.json").json()["paths"]
            assert paths.keys() >= {"/v1/voice/web-call", "/v1/agents/{id}/web-call"}
            call = client.post("/v1/voice/web-call", json={"agent_id": str(SUPPORT_AGENT)}, headers=feather_headers())
            assert call.status_code == 200
            assert "server" not in call.headers
            assert creator.sessions[0].session_id == uuid.UUID(call.json()["session_id"])
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert not thread.is_alive()


def test_serve_refuses_production_without_a_keys_file_before_binding(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, DOOR_API_KEYS_FILE=None, DOOR_HOST="127.0.0.1", DOOR_PORT=free_port())
    with pytest.raises(SettingsError, match="DOOR_API_KEYS_FILE"):
        serve(settings)


async def test_default_session_store_records_a_test_session(tmp_path: Path) -> None:
    from records.store import SessionStore

    database_url = f"sqlite:///{tmp_path / 'door.db'}"
    settings = make_settings(tmp_path, DATABASE_URL=database_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://door.test") as client:
            agent = await client.post(
                "/v1/voice/web-call",
                json={"agent_id": str(SUPPORT_AGENT), "context_variables": {"order_count": "2"}},
                headers=feather_headers(),
            )
            team = await client.post(
                "/v1/voice/web-call", json={"team_id": str(FRONT_DESK_TEAM)}, headers=feather_headers()
            )
            revdesk = await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())
    assert agent.status_code == team.status_code == revdesk.status_code == 200

    store = SessionStore(database_url)
    try:
        agent_row = await store.get(agent.json()["session_id"])
        team_row = await store.get(team.json()["session_id"])
        assert agent_row is not None and team_row is not None
        assert (agent_row.session_type, agent_row.agent_id, agent_row.team_id) == ("test", SUPPORT_AGENT, None)
        assert agent_row.context_variables == {"order_count": 2}
        assert (team_row.session_type, team_row.agent_id, team_row.team_id) == ("test", None, FRONT_DESK_TEAM)
    finally:
        await store.aclose()


async def test_a_blocking_session_creator_runs_off_the_event_loop(tmp_path: Path) -> None:
    creator = SyncRecordingSessionCreator()
    app = create_app(make_settings(tmp_path), session_creator=creator)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as client:
        response = await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())
    assert response.status_code == 200
    assert creator.sessions[0].agent_id == SUPPORT_AGENT
    assert creator.threads and threading.current_thread().name not in creator.threads
