"""API keys of the door: stored hashed, compared in constant time, scoped to agents and teams.

The keys file (`DOOR_API_KEYS_FILE`) is a YAML list; a raw key never appears in it:

    - name: acme-console                 # shown in logs instead of the key
      sha256: 9f86d081884c7d65...        # hash_api_key(raw), 64 hex digits
      scopes:
        agents: ["*"]                    # agent UUIDs this key may call, or "*" for all
        teams: [3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01]

Dev mode without a keys file accepts one well-known key, `DEV_API_KEY`, scoped to everything (the same idea
as LiveKit's `devkey`/`secret`): it is public, so production refuses to start without a keys file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.settings import DEV_MODE_HINT, SettingsError
from door.settings import DoorSettings

log = logging.getLogger("voice_worker.door.keys")

DEV_API_KEY = "dev-door-key-insecure-do-not-use-in-production"
DEV_KEY_NAME = "dev"

_HEX64 = r"^[0-9a-f]{64}$"


def hash_api_key(raw: str) -> str:
    """The `sha256` value to put in the keys file for `raw` (lowercase hex)."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def generate_api_key() -> str:
    """A fresh key with 256 bits from the OS CSPRNG; hand it to the client, store only its hash."""
    return f"vwd_{secrets.token_urlsafe(32)}"


Wildcard = Literal["*"]


class KeyScopes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agents: tuple[uuid.UUID | Wildcard, ...] = ()
    teams: tuple[uuid.UUID | Wildcard, ...] = ()

    @staticmethod
    def _allows(entries: tuple[uuid.UUID | str, ...], target: uuid.UUID) -> bool:
        return any(entry == "*" or entry == target for entry in entries)

    def allows_agent(self, agent_id: uuid.UUID) -> bool:
        return self._allows(self.agents, agent_id)

    def allows_team(self, team_id: uuid.UUID) -> bool:
        return self._allows(self.teams, team_id)


class ApiKey(BaseModel):
    """One configured key. `name` identifies the caller in logs, rate limits and idempotency scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    sha256: str = Field(pattern=_HEX64)
    scopes: KeyScopes = KeyScopes()

    @field_validator("sha256", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class _KeysFile(BaseModel):
    keys: tuple[ApiKey, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> _KeysFile:
        names = [k.name for k in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("key names must be unique")
        hashes = [k.sha256 for k in self.keys]
        if len(hashes) != len(set(hashes)):
            raise ValueError("two entries have the same sha256 (the same key configured twice)")
        return self


class KeyRing:
    """The configured keys; `authenticate()` finds the one a presented raw key matches."""

    def __init__(self, keys: tuple[ApiKey, ...] | list[ApiKey]) -> None:
        self._keys = tuple(keys)
        self._digests = tuple(bytes.fromhex(k.sha256) for k in self._keys)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self._keys)

    def authenticate(self, presented: str | None) -> ApiKey | None:
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        match: ApiKey | None = None
        # Compare against every key without stopping early, so timing says nothing about which one matched.
        for key, stored in zip(self._keys, self._digests, strict=True):
            if hmac.compare_digest(digest, stored):
                match = key
        return match


def load_keys_file(path: Path) -> KeyRing:
    """The keys in `path`, or `SettingsError` naming the file and the field (never a key or hash)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"DOOR_API_KEYS_FILE {path} cannot be read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise SettingsError(f"DOOR_API_KEYS_FILE {path} is not valid YAML") from None
    if not isinstance(document, list) or not document:
        raise SettingsError(f"DOOR_API_KEYS_FILE {path} must be a non-empty YAML list of {{name, sha256, scopes}}")
    try:
        parsed = _KeysFile.model_validate({"keys": document})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "(list)"
        # Only the message: `input` could be a hash (or a raw key pasted by mistake).
        reason = first["msg"].removeprefix("Value error, ")
        raise SettingsError(f"DOOR_API_KEYS_FILE {path}: {where}: {reason}") from None
    return KeyRing(parsed.keys)


def dev_key_ring() -> KeyRing:
    return KeyRing(
        [ApiKey(name=DEV_KEY_NAME, sha256=hash_api_key(DEV_API_KEY), scopes=KeyScopes(agents=("*",), teams=("*",)))]
    )


def key_ring_for(settings: DoorSettings) -> KeyRing:
    """The keys the door accepts under `settings`; production without a keys file is a `SettingsError`."""
    if settings.door_api_keys_file is not None:
        ring = load_keys_file(settings.door_api_keys_file)
        log.info("door accepts %d API key(s): %s", len(ring.names), ", ".join(ring.names))
        return ring
    if not settings.is_dev:
        raise SettingsError(
            "DOOR_API_KEYS_FILE is not set (production mode): point it at the YAML list of hashed API keys "
            f"(docs/operations.md), {DEV_MODE_HINT} and the dev door key"
        )
    log.warning(
        "dev mode and no DOOR_API_KEYS_FILE: the door accepts only the well-known dev key "
        "(door.keys.DEV_API_KEY), scoped to every agent and team"
    )
    return dev_key_ring()
