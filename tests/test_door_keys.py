"""API keys: hashed configuration, constant-time lookup, scopes, and the start-up rules (dev key, production)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
import yaml

from contract.settings import SettingsError
from door.app import create_app
from door.keys import (
    DEV_API_KEY,
    ApiKey,
    KeyRing,
    KeyScopes,
    generate_api_key,
    hash_api_key,
    key_ring_for,
    load_keys_file,
)
from tests.doubles.door_sessions import RecordingSessionCreator
from tests.doubles.door_world import KEY_ALL, KEY_SUPPORT_ONLY, SUPPORT_AGENT, make_settings


def test_hash_is_the_hex_sha256_of_the_key() -> None:
    assert hash_api_key("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(hash_api_key(generate_api_key())) == 64


def test_generated_keys_are_long_and_distinct() -> None:
    keys = {generate_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(k) >= 40 for k in keys)


def test_authenticate_finds_the_matching_key_only() -> None:
    ring = KeyRing(
        [
            ApiKey(name="a", sha256=hash_api_key("key-a")),
            ApiKey(name="b", sha256=hash_api_key("key-b").upper()),  # hashes are accepted in either case
        ]
    )
    assert ring.authenticate("key-a").name == "a"  # type: ignore[union-attr]  # a known key
    assert ring.authenticate("key-b").name == "b"  # type: ignore[union-attr]  # a known key
    for wrong in (None, "", "key-c", "key-a ", hash_api_key("key-a")):
        assert ring.authenticate(wrong) is None


def test_authenticate_compares_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    import door.keys

    calls: list[tuple[bytes, bytes]] = []
    real = door.keys.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(door.keys.hmac, "compare_digest", spy)
    ring = KeyRing([ApiKey(name=n, sha256=hash_api_key(n)) for n in ("k1", "k2", "k3")])
    assert ring.authenticate("k1") is not None
    assert len(calls) == 3  # every configured key is compared, even after a match


def test_scopes() -> None:
    other = uuid.uuid4()
    scopes = KeyScopes(agents=(SUPPORT_AGENT,), teams=("*",))
    assert scopes.allows_agent(SUPPORT_AGENT) and not scopes.allows_agent(other)
    assert scopes.allows_team(other)
    assert not KeyScopes().allows_agent(SUPPORT_AGENT) and not KeyScopes().allows_team(SUPPORT_AGENT)


def test_load_keys_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.door_api_keys_file is not None
    ring = load_keys_file(settings.door_api_keys_file)
    assert ring.names == ("console", "support-widget", "other-client")
    support = ring.authenticate(KEY_SUPPORT_ONLY)
    assert support is not None and support.scopes.allows_agent(SUPPORT_AGENT)
    assert not support.scopes.allows_team(uuid.uuid4())
    assert KEY_ALL not in settings.door_api_keys_file.read_text()


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("- name: a\n  sha256: nothex\n", "0.sha256"),
        ("[]", "non-empty YAML list"),
        ("{}", "non-empty YAML list"),
        ("", "non-empty YAML list"),
        ("- 5", "0: Input should be a valid dictionary"),
        ("- name: a\n  sha256: " + "a" * 64 + "\n  scopes: {agents: [not-a-uuid]}\n", "0.scopes.agents.0"),
        ("- name: a\n  sha256: " + "a" * 64 + "\n  raw_key: oops\n", "0.raw_key"),
        ("- {name: a, sha256: " + "a" * 64 + "}\n- {name: a, sha256: " + "b" * 64 + "}\n", "unique"),
        ("- {name: a, sha256: " + "a" * 64 + "}\n- {name: b, sha256: " + "a" * 64 + "}\n", "same sha256"),
        ("- [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_keys_files_are_refused_without_echoing_values(tmp_path: Path, document: str, complaint: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(document)
    with pytest.raises(SettingsError) as refused:
        load_keys_file(path)
    assert complaint in str(refused.value)
    assert "a" * 64 not in str(refused.value) and "nothex" not in str(refused.value)


def test_missing_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        load_keys_file(tmp_path / "absent.yaml")


def test_production_refuses_to_start_without_a_keys_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, DOOR_API_KEYS_FILE=None)
    with pytest.raises(SettingsError, match="DOOR_API_KEYS_FILE"):
        key_ring_for(settings)
    with pytest.raises(SettingsError, match="DOOR_API_KEYS_FILE"):
        create_app(settings, session_creator=RecordingSessionCreator())


def test_production_refuses_placeholder_secrets(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, LIVEKIT_API_SECRET="changeme")
    with pytest.raises(SettingsError, match="LIVEKIT_API_SECRET"):
        create_app(settings, session_creator=RecordingSessionCreator())


def test_dev_mode_without_keys_file_accepts_only_the_dev_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, VOICE_WORKER_MODE="dev", DOOR_API_KEYS_FILE=None)
    ring = key_ring_for(settings)
    assert ring.authenticate(DEV_API_KEY) is not None
    assert ring.authenticate(KEY_ALL) is None
    assert DEV_API_KEY not in caplog.text


def test_dev_mode_with_a_keys_file_uses_the_file(tmp_path: Path) -> None:
    ring = key_ring_for(make_settings(tmp_path, VOICE_WORKER_MODE="dev"))
    assert ring.authenticate(DEV_API_KEY) is None
    assert ring.authenticate(KEY_ALL) is not None


def test_keys_file_round_trip_from_the_helper(tmp_path: Path) -> None:
    raw = generate_api_key()
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([{"name": "ops", "sha256": hash_api_key(raw), "scopes": {"teams": ["*"]}}]))
    key = load_keys_file(path).authenticate(raw)
    assert key is not None and key.scopes.allows_team(uuid.uuid4()) and not key.scopes.allows_agent(uuid.uuid4())
