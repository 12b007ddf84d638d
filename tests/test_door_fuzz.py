"""Schema-driven fuzzing of the door over its own /openapi.json (schemathesis): no 5xx, every response and
header as documented, refusals for invalid data, auth enforced, and every body valid under the seeds too.

Generated cases are steered a little so that they reach the interesting paths: the auth header is a valid
key, a narrowly scoped key, a generated one or absent, and some bodies/paths name real catalog entries so
that successes, 403s and 409s are fuzzed too, not only 404s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import DataGenerationMethod
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from door.app import create_app
from tests.doubles import door_contracts as contracts
from tests.doubles.door_sessions import RecordingSessionCreator
from tests.doubles.door_world import (
    DISABLED_AGENT,
    DISABLED_TEAM,
    FRONT_DESK_TEAM,
    KEY_ALL,
    KEY_SUPPORT_ONLY,
    SALES_AGENT,
    SUPPORT_AGENT,
    UNKNOWN_AGENT,
    make_settings,
)

MAX_EXAMPLES = 50
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
)

AGENTS = [SUPPORT_AGENT, SALES_AGENT, DISABLED_AGENT, UNKNOWN_AGENT]
TEAMS = [FRONT_DESK_TEAM, DISABLED_TEAM]
# Weighted towards callable targets so that successes are fuzzed as often as refusals.
TARGETS = [None, SUPPORT_AGENT, SUPPORT_AGENT, SALES_AGENT, FRONT_DESK_TEAM, FRONT_DESK_TEAM, *AGENTS[2:], *TEAMS[1:]]
SEEDS = [
    None,
    None,
    {"tier": "gold"},
    {"order_count": "7", "wants_callback": "no"},
    {"nope": 1},
    {"order_count": 1.5},
]


def _seed_conformance(ctx: Any, response: Any, case: schemathesis.Case) -> None:
    """Bodies must also satisfy the seed document's schema wherever the seed documents that status."""
    seed = contracts.feather() if case.path == contracts.FEATHER_PATH else contracts.revdesk()
    schema = contracts.response_schema(seed, case.path, response.status_code)
    if schema is not None:
        contracts.validate(response.json(), schema)


def _auth_headers(path: str, choice: str) -> dict[str, str] | None:
    key = {"all": KEY_ALL, "scoped": KEY_SUPPORT_ONLY}.get(choice)
    if key is None:
        return None
    return {"x-api-key": key} if path == contracts.FEATHER_PATH else {"Authorization": f"Bearer {key}"}


def _steer(case: schemathesis.Case, target: Any, seeds: Any) -> None:
    """Point a positive case at a real catalog entry (negative cases stay as generated)."""
    if target is None or case.data_generation_method is not DataGenerationMethod.positive:
        return
    if case.path == contracts.REVDESK_PATH:
        if target in AGENTS:
            case.path_parameters = {**(case.path_parameters or {}), "id": str(target)}
        return
    if isinstance(case.body, dict):
        field, other = ("agent_id", "team_id") if target in AGENTS else ("team_id", "agent_id")
        case.body = {**case.body, field: str(target), other: None, "context_variables": seeds}


@pytest.fixture
def openapi_31() -> Iterator[None]:
    """FastAPI emits OpenAPI 3.1, which schemathesis 3.x supports behind an experimental switch."""
    already = schemathesis.experimental.OPEN_API_3_1.is_enabled
    schemathesis.experimental.OPEN_API_3_1.enable()
    yield
    if not already:
        schemathesis.experimental.OPEN_API_3_1.disable()


@pytest.mark.usefixtures("openapi_31")
@pytest.mark.parametrize("path", [contracts.FEATHER_PATH, contracts.REVDESK_PATH])
def test_fuzz_web_call_routes(tmp_path: Path, path: str) -> None:
    creator = RecordingSessionCreator()
    app = create_app(make_settings(tmp_path), session_creator=creator)
    schema = schemathesis.from_asgi("/openapi.json", app)
    operation = schema[path]["POST"]
    cases = st.one_of(
        operation.as_strategy(data_generation_method=DataGenerationMethod.positive),
        operation.as_strategy(data_generation_method=DataGenerationMethod.negative),
    )
    seen: dict[int, int] = {}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=cases,
        auth=st.sampled_from(["all"] * 4 + ["scoped", "generated", "none"]),
        target=st.sampled_from(TARGETS),
        seeds=st.sampled_from(SEEDS),
    )
    def run(case: schemathesis.Case, auth: str, target: Any, seeds: Any) -> None:
        _steer(case, target, seeds)
        headers = _auth_headers(path, auth)
        if auth == "none" and case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() not in {"x-api-key", "authorization"}}
        response = case.call_and_validate(headers=headers, checks=CHECKS, additional_checks=(_seed_conformance,))
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    run()
    # The steering must actually reach the paths it is there for; otherwise the fuzzing proves little.
    assert 200 in seen and 401 in seen, seen
    assert all(status < 500 for status in seen), seen
