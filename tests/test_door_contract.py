"""Contract tests: every response the door gives, success and each refusal, checked against the seed documents
(parsed from $VOICE_WORKER_SEEDS_DIR at test time, else from their copies in tests/contracts/) and against the
door's own /openapi.json.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from door.app import create_app
from tests.doubles import door_contracts as contracts
from tests.doubles.door_sessions import RecordingSessionCreator
from tests.doubles.door_world import (
    DISABLED_AGENT,
    DISABLED_TEAM,
    FRONT_DESK_TEAM,
    KEY_SUPPORT_ONLY,
    PUBLIC_URL,
    SALES_AGENT,
    SUPPORT_AGENT,
    TEAM_WITH_DISABLED_GREETER,
    UNKNOWN_AGENT,
    UNKNOWN_TEAM,
    FakeClock,
    feather_headers,
    make_settings,
    revdesk_headers,
    revdesk_path,
)


@dataclass
class World:
    client: httpx.AsyncClient
    creator: RecordingSessionCreator
    openapi: dict[str, Any]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    creator = RecordingSessionCreator()
    app = create_app(make_settings(tmp_path), session_creator=creator, clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as client:
        openapi = (await client.get("/openapi.json")).json()
        yield World(client, creator, openapi)


@pytest.fixture
async def strict_world(tmp_path: Path) -> AsyncIterator[World]:
    """One call per minute, so the second call of a test is rate limited."""
    creator = RecordingSessionCreator()
    settings = make_settings(tmp_path, DOOR_RATE_LIMIT_PER_MINUTE=1)
    app = create_app(settings, session_creator=creator, clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door.test") as client:
        yield World(client, creator, (await client.get("/openapi.json")).json())


Call = Callable[[World], Awaitable[httpx.Response]]


def _feather(body: Any, headers: dict[str, str] | None = None) -> Call:
    async def call(w: World) -> httpx.Response:
        sent = feather_headers() if headers is None else headers
        return await w.client.post(contracts.FEATHER_PATH, json=body, headers=sent)

    return call


def _agent(agent_id: uuid.UUID, headers: dict[str, str] | None = None, **seeds: Any) -> Call:
    body: dict[str, Any] = {"agent_id": str(agent_id)}
    if seeds:
        body["context_variables"] = seeds
    return _feather(body, headers)


def _team(team_id: uuid.UUID, headers: dict[str, str] | None = None) -> Call:
    return _feather({"team_id": str(team_id)}, headers)


def _revdesk(agent: Any, headers: dict[str, str] | None = None) -> Call:
    async def call(w: World) -> httpx.Response:
        return await w.client.post(revdesk_path(agent), headers=revdesk_headers() if headers is None else headers)

    return call


def _after_store_failure(call: Call) -> Call:
    async def failing(w: World) -> httpx.Response:
        w.creator.fail_next = 1
        return await call(w)

    return failing


def _after_conflicting_use(agent_a: uuid.UUID, agent_b: uuid.UUID) -> Call:
    async def call(w: World) -> httpx.Response:
        first = await w.client.post(revdesk_path(agent_a), headers=revdesk_headers(idempotency_key="k-1"))
        assert first.status_code == 200
        return await w.client.post(revdesk_path(agent_b), headers=revdesk_headers(idempotency_key="k-1"))

    return call


def _replay(agent: uuid.UUID) -> Call:
    async def call(w: World) -> httpx.Response:
        first = await w.client.post(revdesk_path(agent), headers=revdesk_headers(idempotency_key="replay-me"))
        second = await w.client.post(revdesk_path(agent), headers=revdesk_headers(idempotency_key="replay-me"))
        assert first.headers["Idempotent-Replayed"] == "false"
        assert second.headers["Idempotent-Replayed"] == "true"
        assert second.json() == first.json()
        return second

    return call


FEATHER_CASES: dict[str, tuple[Call, int]] = {
    "agent": (_agent(SUPPORT_AGENT), 200),
    "agent with seeds": (_agent(SUPPORT_AGENT, tier="GOLD", order_count="3"), 200),
    "team (seeds ignored)": (_feather({"team_id": str(FRONT_DESK_TEAM), "context_variables": {"nope": 1}}), 200),
    "explicit nulls": (_feather({"agent_id": str(SALES_AGENT), "team_id": None, "context_variables": None}), 200),
    "neither agent nor team": (_feather({}), 422),
    "both agent and team": (_feather({"agent_id": str(SUPPORT_AGENT), "team_id": str(FRONT_DESK_TEAM)}), 422),
    "agent_id not a uuid": (_feather({"agent_id": "support"}), 422),
    "body not an object": (_feather([1, 2]), 422),
    "unknown context variable": (_agent(SUPPORT_AGENT, favourite_colour="red"), 422),
    "uncoercible context variable": (_agent(SUPPORT_AGENT, order_count="many"), 422),
    "system context variable": (_agent(SUPPORT_AGENT, end_user_id="u-1"), 422),
    "no key": (_agent(SUPPORT_AGENT, headers={}), 401),
    "unknown key": (_agent(SUPPORT_AGENT, headers={"x-api-key": "vwd_not-a-key"}), 401),
    "key not scoped to agent": (_agent(SALES_AGENT, headers=feather_headers(KEY_SUPPORT_ONLY)), 403),
    "key not scoped to team": (_team(FRONT_DESK_TEAM, headers=feather_headers(KEY_SUPPORT_ONLY)), 403),
    "unknown agent": (_agent(UNKNOWN_AGENT), 404),
    "unknown team": (_team(UNKNOWN_TEAM), 404),
    "disabled agent": (_agent(DISABLED_AGENT), 409),
    "disabled team": (_team(DISABLED_TEAM), 409),
    "team with disabled greeter": (_team(TEAM_WITH_DISABLED_GREETER), 409),
    "session store down": (_after_store_failure(_agent(SUPPORT_AGENT)), 503),
}

REVDESK_CASES: dict[str, tuple[Call, int]] = {
    "agent": (_revdesk(SUPPORT_AGENT), 200),
    "agent, upper-case id": (_revdesk(str(SALES_AGENT).upper()), 200),
    "idempotent replay": (_replay(SUPPORT_AGENT), 200),
    "idempotency key too long": (_revdesk(SUPPORT_AGENT, revdesk_headers(idempotency_key="k" * 256)), 400),
    "no key": (_revdesk(SUPPORT_AGENT, headers={}), 401),
    "basic auth instead of bearer": (_revdesk(SUPPORT_AGENT, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401),
    "unknown key": (_revdesk(SUPPORT_AGENT, headers=revdesk_headers("vwd_not-a-key")), 401),
    "key not scoped to agent": (_revdesk(SALES_AGENT, headers=revdesk_headers(KEY_SUPPORT_ONLY)), 403),
    "unknown agent": (_revdesk(UNKNOWN_AGENT), 404),
    "id not a uuid": (_revdesk("support"), 404),
    "a team id is not an agent": (_revdesk(FRONT_DESK_TEAM), 404),
    "disabled agent": (_revdesk(DISABLED_AGENT), 409),
    "idempotency key reused for another agent": (_after_conflicting_use(SUPPORT_AGENT, SALES_AGENT), 409),
    "session store down": (_after_store_failure(_revdesk(SUPPORT_AGENT)), 503),
}


def _documented_schema(openapi: dict[str, Any], path: str, status: int) -> dict[str, Any]:
    responses = openapi["paths"][path]["post"]["responses"]
    assert str(status) in responses, f"{status} is not documented for {path} in /openapi.json"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    return contracts.resolve(schema, openapi)


def _check(openapi: dict[str, Any], seed: dict[str, Any], path: str, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    seed_schema = contracts.response_schema(seed, path, status)
    if seed_schema is not None:
        contracts.validate(body, seed_schema)
    contracts.validate(body, _documented_schema(openapi, path, status))


@pytest.mark.parametrize("case", list(FEATHER_CASES))
async def test_feather_responses_conform(world: World, case: str) -> None:
    call, status = FEATHER_CASES[case]
    response = await call(world)
    _check(world.openapi, contracts.feather(), contracts.FEATHER_PATH, response, status)
    if status == 200:
        body = response.json()
        assert set(body) == {"livekit_url", "access_token", "room_name", "session_id"}
        assert body["livekit_url"] == PUBLIC_URL
        assert world.creator.sessions[-1].session_id == uuid.UUID(body["session_id"])
        assert world.creator.sessions[-1].session_type == "test"
    else:
        assert world.creator.sessions == []


@pytest.mark.parametrize("case", list(REVDESK_CASES))
async def test_revdesk_responses_conform(world: World, case: str) -> None:
    call, status = REVDESK_CASES[case]
    response = await call(world)
    _check(world.openapi, contracts.revdesk(), contracts.REVDESK_PATH, response, status)
    if status == 200:
        data = response.json()["data"]
        assert data["expires_in"] == 300
        assert data["ice_servers"] == []
        assert data["room_url"] == PUBLIC_URL
        assert world.creator.sessions[-1].agent_id == uuid.UUID(data["agent_id"])
        assert world.creator.sessions[-1].session_type == "test"
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_rate_limited_responses_conform(strict_world: World) -> None:
    first = await _agent(SUPPORT_AGENT)(strict_world)
    assert first.status_code == 200
    feather = await _agent(SUPPORT_AGENT)(strict_world)
    revdesk = await strict_world.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers())
    _check(strict_world.openapi, contracts.feather(), contracts.FEATHER_PATH, feather, 429)
    _check(strict_world.openapi, contracts.revdesk(), contracts.REVDESK_PATH, revdesk, 429)
    for response in (feather, revdesk):
        assert int(response.headers["Retry-After"]) >= 1
    assert revdesk.json()["error"]["code"] == "rate_limited"


@pytest.mark.skipif(
    not contracts.seeds_available() and not os.environ.get("CI"),
    reason="no seed documents: neither VOICE_WORKER_SEEDS_DIR nor ../shared/seeds beside the checkout",
)
@pytest.mark.parametrize("seed", [contracts.FEATHER_SEED, contracts.REVDESK_SEED])
def test_the_copies_in_tests_contracts_are_the_seeds(seed: str) -> None:
    assert contracts.seed_from_copy(seed) == contracts.seed_from_seeds_dir(seed)


def test_every_documented_seed_status_is_exercised() -> None:
    feather = {str(status) for _, status in FEATHER_CASES.values()} | {"429"}
    revdesk = {str(status) for _, status in REVDESK_CASES.values()} | {"429"}
    assert contracts.seed_statuses(contracts.feather(), contracts.FEATHER_PATH) <= feather
    assert contracts.seed_statuses(contracts.revdesk(), contracts.REVDESK_PATH) <= revdesk


async def test_context_variable_errors_name_the_variable(world: World) -> None:
    response = await world.client.post(
        contracts.FEATHER_PATH,
        json={"agent_id": str(SUPPORT_AGENT), "context_variables": {"favourite_colour": "red", "order_count": "many"}},
        headers=feather_headers(),
    )
    assert response.status_code == 422
    by_loc = {tuple(item["loc"]): item for item in response.json()["detail"]}
    assert set(by_loc) == {
        ("body", "context_variables", "favourite_colour"),
        ("body", "context_variables", "order_count"),
    }
    assert by_loc[("body", "context_variables", "favourite_colour")]["type"] == "context_variable_unknown"
    assert by_loc[("body", "context_variables", "order_count")]["type"] == "context_variable_coercion"


async def test_seeds_are_coerced_into_the_session_and_team_calls_ignore_them(world: World) -> None:
    agent = await world.client.post(
        contracts.FEATHER_PATH,
        json={
            "agent_id": str(SUPPORT_AGENT),
            "context_variables": {"tier": "GOLD", "order_count": "3", "wants_callback": "yes"},
        },
        headers=feather_headers(),
    )
    team = await world.client.post(
        contracts.FEATHER_PATH,
        json={"team_id": str(FRONT_DESK_TEAM), "context_variables": {"tier": "gold"}},
        headers=feather_headers(),
    )
    assert agent.status_code == team.status_code == 200
    agent_session, team_session = world.creator.sessions
    assert agent_session.context_variables == {"tier": "gold", "order_count": 3, "wants_callback": True}
    assert (agent_session.agent_id, agent_session.team_id) == (SUPPORT_AGENT, None)
    assert team_session.context_variables is None
    assert (team_session.agent_id, team_session.team_id) == (None, FRONT_DESK_TEAM)


async def test_both_xor_errors_use_the_validation_shape(world: World) -> None:
    for body in ({}, {"agent_id": str(SUPPORT_AGENT), "team_id": str(FRONT_DESK_TEAM)}):
        response = await world.client.post(contracts.FEATHER_PATH, json=body, headers=feather_headers())
        [error] = response.json()["detail"]
        assert (error["loc"], error["type"]) == (["body"], "agent_xor_team")


async def test_revdesk_validation_errors_are_400_with_fields(world: World) -> None:
    response = await world.client.post(revdesk_path(SUPPORT_AGENT), headers=revdesk_headers(idempotency_key="k" * 256))
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["code"] == "validation_error"
    assert set(error["fields"]) == {"Idempotency-Key"}


# --- /openapi.json against the seeds ---------------------------------------------------------------------


def _operation(document: dict[str, Any], path: str) -> dict[str, Any]:
    return document["paths"][path]["post"]


async def test_openapi_operation_ids_and_security(world: World) -> None:
    doc = world.openapi
    feather, revdesk = contracts.feather(), contracts.revdesk()
    for seed, path in ((feather, contracts.FEATHER_PATH), (revdesk, contracts.REVDESK_PATH)):
        ours, theirs = _operation(doc, path), _operation(seed, path)
        assert ours["operationId"] == theirs["operationId"]
        # RevDesk declares bearerAuth document-wide; Feather per operation.
        assert ours["security"] == theirs.get("security", seed.get("security"))
        assert contracts.seed_statuses(seed, path) <= set(ours["responses"])
        for name, scheme in seed["components"]["securitySchemes"].items():
            assert contracts.shape(doc["components"]["securitySchemes"][name]) == scheme
    assert "422" not in _operation(doc, contracts.REVDESK_PATH)["responses"]


async def test_openapi_feather_schemas_match_the_seed(world: World) -> None:
    doc, seed = world.openapi, contracts.feather()
    ours, theirs = _operation(doc, contracts.FEATHER_PATH), _operation(seed, contracts.FEATHER_PATH)
    request = ours["requestBody"]["content"]["application/json"]["schema"]
    seed_request = theirs["requestBody"]["content"]["application/json"]["schema"]
    assert contracts.shape(contracts.resolve(request, doc)) == contracts.shape(contracts.resolve(seed_request, seed))
    assert ours["requestBody"]["required"] is theirs["requestBody"]["required"]
    for status in ("200", "422"):
        mine = ours["responses"][status]["content"]["application/json"]["schema"]
        seeds = theirs["responses"][status]["content"]["application/json"]["schema"]
        assert contracts.shape(contracts.resolve(mine, doc)) == contracts.shape(contracts.resolve(seeds, seed))


async def test_openapi_revdesk_schemas_match_the_seed(world: World) -> None:
    doc, seed = world.openapi, contracts.revdesk()
    ours, theirs = _operation(doc, contracts.REVDESK_PATH), _operation(seed, contracts.REVDESK_PATH)
    success = ours["responses"]["200"]["content"]["application/json"]["schema"]
    seed_success = theirs["responses"]["200"]["content"]["application/json"]["schema"]
    assert contracts.shape(contracts.resolve(success, doc)) == contracts.shape(seed_success)

    seed_error = contracts.shape(seed["components"]["schemas"]["ErrorEnvelope"])["properties"]["error"]
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    our_error = contracts.shape(contracts.resolve(envelope, doc))["properties"]["error"]
    assert our_error["required"] == seed_error["required"]
    for name, spec in seed_error["properties"].items():
        assert our_error["properties"][name].items() >= spec.items(), name
    for status in ("400", "401", "403", "404", "409", "429"):
        assert ours["responses"][status]["content"]["application/json"]["schema"] == envelope

    params = {(p["in"], p["name"]): p for p in ours["parameters"]}
    for seed_param in theirs["parameters"]:
        mine = params[(seed_param["in"], seed_param["name"])]
        assert mine["required"] == seed_param["required"]
        assert mine["schema"]["type"] == seed_param["schema"]["type"]


async def test_healthz(world: World) -> None:
    response = await world.client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
