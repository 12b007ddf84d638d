"""The door's /metrics: every answered web-call request is counted by contract and status."""

from __future__ import annotations

from pathlib import Path

import httpx

from door.app import create_app
from tests.doubles.door_sessions import RecordingSessionCreator
from tests.doubles.door_world import (
    SUPPORT_AGENT,
    UNKNOWN_AGENT,
    FakeClock,
    feather_headers,
    make_settings,
    revdesk_headers,
    revdesk_path,
)


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("{", 1)[1].split("}", 1)[0] == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_requests_are_counted_by_contract_and_status(tmp_path: Path):
    app = create_app(make_settings(tmp_path), session_creator=RecordingSessionCreator(), clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as client:
        ok = await client.post("/v1/voice/web-call", json={"agent_id": str(SUPPORT_AGENT)}, headers=feather_headers())
        missing = await client.post(
            "/v1/voice/web-call", json={"agent_id": str(UNKNOWN_AGENT)}, headers=feather_headers()
        )
        unauthorized = await client.post(revdesk_path(SUPPORT_AGENT), headers={})
        assert (ok.status_code, missing.status_code, unauthorized.status_code) == (200, 404, 401)
        assert (await client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())).status_code == 200
        scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    text = scraped.text
    assert _sample(text, "voice_worker_door_requests_total", contract="feather", status="200") == 1
    assert _sample(text, "voice_worker_door_requests_total", contract="feather", status="404") == 1
    assert _sample(text, "voice_worker_door_requests_total", contract="revdesk", status="401") == 1
    assert _sample(text, "voice_worker_door_requests_total", contract="revdesk", status="200") == 1
    assert _sample(text, "voice_worker_door_request_seconds_count", contract="feather") == 2
    assert "/metrics" not in app.openapi()["paths"], "/metrics is operational, not part of either contract"
