"""A small world for door tests: a catalog directory, a hashed keys file, settings and a fake clock."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from contract.settings import EXAMPLE_CATALOG
from door.keys import hash_api_key
from door.settings import DoorSettings

SUPPORT_AGENT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
SALES_AGENT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02")
FRONT_DESK_TEAM = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")
DISABLED_AGENT = uuid.UUID("6c1f4d2b-0e5a-4d3c-9b2f-3a7e8d9c0b01")
DISABLED_TEAM = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e02")
TEAM_WITH_DISABLED_GREETER = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e03")
UNKNOWN_AGENT = uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100")
UNKNOWN_TEAM = uuid.UUID("1f0e0d0c-0b0a-4908-8706-050403020100")

# Raw keys exist only in tests; the keys file holds their hashes.
KEY_ALL = "vwd_test-key-all-scopes-0123456789abcdef0123456789"
KEY_SUPPORT_ONLY = "vwd_test-key-support-only-0123456789abcdef012345"
KEY_OTHER_CLIENT = "vwd_test-key-other-client-0123456789abcdef012345"
LIVEKIT_KEY = "APItestdoorkey"
LIVEKIT_SECRET = "livekit-test-secret-0123456789abcdef0123456789abcdef"
SIGNING_SECRET = "dispatch-test-signing-secret-0123456789abcdef0123456789"
AGENT_NAME = "voice-worker-under-test"
ISSUER = "voice-worker-door"
PUBLIC_URL = "wss://livekit.example.test"

ALL_SECRETS = (KEY_ALL, KEY_SUPPORT_ONLY, KEY_OTHER_CLIENT, LIVEKIT_SECRET, SIGNING_SECRET)


def _agent(agent_id: uuid.UUID, name: str, *, enabled: bool) -> dict:
    revision = uuid.uuid5(agent_id, "revision")
    return {
        "kind": "agent",
        "id": str(agent_id),
        "name": name,
        "enabled": enabled,
        "active_revision_id": str(revision),
        "revisions": [{"id": str(revision), "system_prompt": "You are a test agent."}],
    }


def _team(team_id: uuid.UUID, name: str, greeter: uuid.UUID, *, enabled: bool) -> dict:
    member = uuid.uuid5(team_id, "member")
    return {
        "kind": "team",
        "id": str(team_id),
        "name": name,
        "enabled": enabled,
        "initial_member_id": str(member),
        "members": [
            {"id": str(member), "assistant_id": str(greeter), "router_name": "only", "router_description": "All."}
        ],
    }


def write_catalog(directory: Path) -> Path:
    """The example catalog plus a disabled agent, a disabled team and a team whose greeter is disabled."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in EXAMPLE_CATALOG.glob("*.yaml"):
        shutil.copy(source, directory / source.name)
    extra = {
        "disabled-agent.yaml": _agent(DISABLED_AGENT, "Retired", enabled=False),
        "disabled-team.yaml": _team(DISABLED_TEAM, "Closed desk", SUPPORT_AGENT, enabled=False),
        "orphan-team.yaml": _team(TEAM_WITH_DISABLED_GREETER, "Orphan desk", DISABLED_AGENT, enabled=True),
    }
    for name, document in extra.items():
        (directory / name).write_text(yaml.safe_dump(document), encoding="utf-8")
    return directory


def write_keys_file(path: Path) -> Path:
    entries = [
        {"name": "console", "sha256": hash_api_key(KEY_ALL), "scopes": {"agents": ["*"], "teams": ["*"]}},
        {
            "name": "support-widget",
            "sha256": hash_api_key(KEY_SUPPORT_ONLY),
            "scopes": {"agents": [str(SUPPORT_AGENT)]},
        },
        {"name": "other-client", "sha256": hash_api_key(KEY_OTHER_CLIENT), "scopes": {"agents": ["*"], "teams": ["*"]}},
    ]
    path.write_text(yaml.safe_dump(entries), encoding="utf-8")
    return path


def make_settings(tmp_path: Path, **overrides: object) -> DoorSettings:
    """Production-mode settings with real-looking secrets, so tests run the production path."""
    values: dict[str, object] = {
        "VOICE_WORKER_MODE": "production",
        "AGENT_NAME": AGENT_NAME,
        "LIVEKIT_URL": "ws://livekit.internal:7880",
        "LIVEKIT_API_KEY": LIVEKIT_KEY,
        "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
        "DISPATCH_SIGNING_SECRET": SIGNING_SECRET,
        "DISPATCH_ISSUER": ISSUER,
        "CATALOG_PATH": write_catalog(tmp_path / "catalog"),
        "DOOR_API_KEYS_FILE": write_keys_file(tmp_path / "door-keys.yaml"),
        "DOOR_PUBLIC_LIVEKIT_URL": PUBLIC_URL,
        "DOOR_RATE_LIMIT_PER_MINUTE": 10_000,
        "DATABASE_URL": "sqlite:///" + str(tmp_path / "unused.db"),
    }
    values.update(overrides)
    return DoorSettings(_env_file=None, **values)  # type: ignore[call-arg]  # pydantic-settings' init-only option


@dataclass
class FakeClock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def feather_headers(key: str = KEY_ALL) -> dict[str, str]:
    return {"x-api-key": key}


def revdesk_headers(key: str = KEY_ALL, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def revdesk_path(agent_id: uuid.UUID | str) -> str:
    return f"/v1/agents/{agent_id}/web-call"
