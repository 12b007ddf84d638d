"""Settings: dev defaults only in dev mode; production refuses placeholders and names the variable."""

from __future__ import annotations

import pytest

from contract.settings import DEV_DISPATCH_SIGNING_SECRET, SettingsError
from worker.settings import Settings

GOOD = {
    "VOICE_WORKER_MODE": "production",
    "LIVEKIT_API_KEY": "APIabc123",
    "LIVEKIT_API_SECRET": "lk-secret-" + "x" * 30,
    "DISPATCH_SIGNING_SECRET": "dispatch-" + "y" * 40,
}


def make(**env) -> Settings:
    return Settings(_env_file=None, **env)


def test_dev_mode_fills_the_livekit_server_dev_pair():
    settings = make(VOICE_WORKER_MODE="dev")
    assert settings.livekit_credentials() == ("devkey", "secret")
    assert settings.signing_secret() == DEV_DISPATCH_SIGNING_SECRET
    settings.require_production_secrets()  # dev mode never refuses


def test_production_accepts_real_secrets():
    make(**GOOD).require_production_secrets()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"LIVEKIT_API_KEY": None}, "LIVEKIT_API_KEY"),
        ({"LIVEKIT_API_SECRET": "secret"}, "LIVEKIT_API_SECRET"),
        ({"LIVEKIT_API_SECRET": "changeme"}, "LIVEKIT_API_SECRET"),
        ({"DISPATCH_SIGNING_SECRET": None}, "DISPATCH_SIGNING_SECRET"),
        ({"DISPATCH_SIGNING_SECRET": DEV_DISPATCH_SIGNING_SECRET}, "DISPATCH_SIGNING_SECRET"),
        ({"DISPATCH_SIGNING_SECRET": "short"}, "DISPATCH_SIGNING_SECRET"),
        ({"DISPATCH_SIGNING_SECRET": GOOD["LIVEKIT_API_SECRET"]}, "DISPATCH_SIGNING_SECRET equals LIVEKIT_API_SECRET"),
    ],
)
def test_production_refuses_and_names_the_variable(override, named):
    env = {**GOOD, **override}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(SettingsError) as info:
        make(**env).require_production_secrets()
    message = str(info.value)
    assert named in message
    for value in GOOD.values():
        if value not in ("production",):
            assert value not in message, "a secret value leaked into the error"


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("AGENT_NAME", "fleet-a")
    monkeypatch.setenv("LIVEKIT_URL", "wss://example.livekit.cloud")
    settings = make()
    assert settings.agent_name == "fleet-a"
    assert settings.livekit_url == "wss://example.livekit.cloud"
    assert "lk-secret" not in repr(make(**GOOD))


def test_env_example_lists_every_setting():
    from pathlib import Path

    example = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    listed = {line.lstrip("# ").split("=", 1)[0] for line in example.splitlines() if "=" in line}
    aliases = {field.validation_alias for field in Settings.model_fields.values()}
    assert aliases - listed == set(), f"settings missing from .env.example: {sorted(aliases - listed)}"


def test_call_capacity_follows_the_executor_unless_set():
    from worker.settings import DEFAULT_WORKER_CALL_CAPACITY

    assert make().job_executor == "process"
    assert make().call_capacity == DEFAULT_WORKER_CALL_CAPACITY["process"]
    assert make(JOB_EXECUTOR="thread").call_capacity == DEFAULT_WORKER_CALL_CAPACITY["thread"]
    assert make(JOB_EXECUTOR="thread", WORKER_CALL_CAPACITY="12").call_capacity == 12


def test_an_unknown_executor_is_refused_by_name():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        make(JOB_EXECUTOR="fiber")
    assert "JOB_EXECUTOR" in str(err.value) and "'process' or 'thread'" in str(err.value)
