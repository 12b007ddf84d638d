"""compose.yaml: valid against the Compose specification (the schema check-jsonschema vendors), and wired.

No container engine runs here, so nothing is started: these tests read the file as Compose would and check
what would otherwise only show up at `docker compose up` (a misspelt key, a secret the worker refuses, a
service depending on one that is not there, a catalog that needs an API key the developer has not got).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from door.keys import load_keys_file
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
SELFHOSTED_ENV = ROOT / "deploy" / "selfhosted.env"
EXAMPLES = ROOT / "catalog" / "examples"
SELFHOSTED_CATALOG = ROOT / "deploy" / "catalog-selfhosted"
DOOR_KEYS = ROOT / "deploy" / "compose" / "door-keys.yaml"
DOOR_RAW_KEY = "voice-stack-door-key-local-only"  # documented in docs/operations.md

CORE = {"livekit", "postgres", "worker", "door"}
SELFHOSTED = {"ollama", "ollama-pull", "stt", "tts", "speech-models"}
# Model servers in the selfhosted profile and the port each serves its OpenAI-compatible API on.
MODEL_SERVER_PORTS = {"ollama": 11434, "stt": 8000, "tts": 8000}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _compose_schema() -> dict[str, Any]:
    text = (
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    return json.loads(text)


def _schema_errors(document: dict[str, Any]) -> list[str]:
    schema = _compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _interpolate_default(value: str) -> str:
    """What `${NAME:-default}` becomes when NAME is unset (how a fresh checkout sees it)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


# -- the specification ----------------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    assert _schema_errors(compose) == []


def test_the_schema_check_catches_mistakes(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["depends_on"]["livekit"]["condition"] = "service_ready"
    broken["services"]["door"]["helthcheck"] = broken["services"]["door"].pop("healthcheck")
    errors = _schema_errors(broken)
    assert any("service_ready" in e for e in errors)
    assert any("helthcheck" in e for e in errors)


# -- services and profiles ------------------------------------------------------------------------------------


def test_default_profile_is_livekit_worker_door_postgres(services: dict[str, dict[str, Any]]) -> None:
    assert {name for name, s in services.items() if not s.get("profiles")} == CORE


def test_selfhosted_profile_adds_llm_stt_tts_servers(services: dict[str, dict[str, Any]]) -> None:
    assert {name for name, s in services.items() if "selfhosted" in s.get("profiles", [])} == SELFHOSTED
    assert set(services) == CORE | SELFHOSTED


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: image {image!r} is not pinned"


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from the network"


# -- LiveKit --------------------------------------------------------------------------------------------------


def test_livekit_runs_the_dev_server_on_all_container_interfaces(services: dict[str, dict[str, Any]]) -> None:
    livekit = services["livekit"]
    assert livekit["image"].startswith("livekit/livekit-server:")
    command = livekit["command"]
    assert "--dev" in command
    assert command[command.index("--bind") + 1] == "0.0.0.0"
    # signalling 7880/tcp, ICE over TCP 7881, the dev server's single media port 7882/udp
    published = {p.split(":", 1)[1] for p in livekit["ports"]}
    assert published == {"7880:7880", "7881:7881", "7882:7882/udp"}


def test_worker_and_door_hold_the_key_pair_livekit_was_given(services: dict[str, dict[str, Any]]) -> None:
    key, _, secret = services["livekit"]["environment"]["LIVEKIT_KEYS"].partition(": ")
    for name in ("worker", "door"):
        env = services[name]["environment"]
        assert env["LIVEKIT_URL"] == "ws://livekit:7880"
        assert (env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"]) == (key, secret)


# -- worker and door ------------------------------------------------------------------------------------------


def test_worker_runs_the_image_command_and_its_settings_pass_production_checks(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    assert worker["command"] == ["voice-worker", "start"]
    env = {k: _interpolate_default(str(v)) for k, v in worker["environment"].items()}
    assert env["VOICE_WORKER_MODE"] == "production"
    settings = Settings(_env_file=None, **{k: v for k, v in env.items() if v != ""})
    settings.require_production_secrets()  # raises SettingsError naming the variable otherwise


def test_worker_and_door_share_signing_secret_database_and_catalog(services: dict[str, dict[str, Any]]) -> None:
    worker, door = services["worker"]["environment"], services["door"]["environment"]
    for name in ("DISPATCH_SIGNING_SECRET", "DATABASE_URL", "CATALOG_PATH", "AGENT_NAME", "VOICE_WORKER_MODE"):
        assert worker[name] == door[name], name
    assert services["worker"]["volumes"] == services["door"]["volumes"][:1]
    catalog_mount = services["worker"]["volumes"][0]
    assert catalog_mount["target"] == worker["CATALOG_PATH"]
    assert catalog_mount["read_only"] is True
    assert (ROOT / _interpolate_default(catalog_mount["source"])).resolve() == EXAMPLES


def test_database_url_points_at_the_postgres_service(services: dict[str, dict[str, Any]]) -> None:
    url = urlparse(services["worker"]["environment"]["DATABASE_URL"])
    pg = services["postgres"]["environment"]
    assert url.scheme == "postgresql+psycopg"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.path.lstrip("/")) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    assert services["postgres"]["image"].startswith("postgres:16")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_door_serves_on_8000_and_sends_browsers_to_the_published_livekit(services: dict[str, dict[str, Any]]) -> None:
    door = services["door"]
    assert door["command"] == ["voice-worker", "door"]
    env = door["environment"]
    assert env["DOOR_PUBLIC_LIVEKIT_URL"] == "ws://localhost:7880"
    assert "127.0.0.1:8000:8000" in door["ports"]
    assert env["DOOR_PORT"] == "8000"


def test_door_keys_file_accepts_the_documented_local_key(services: dict[str, dict[str, Any]]) -> None:
    mount = next(
        v for v in services["door"]["volumes"] if v["target"] == services["door"]["environment"]["DOOR_API_KEYS_FILE"]
    )
    assert (ROOT / mount["source"]).resolve() == DOOR_KEYS
    ring = load_keys_file(DOOR_KEYS)
    key = ring.authenticate(DOOR_RAW_KEY)
    assert key is not None and key.name == "local-stack"
    assert ring.authenticate("some-other-key") is None


# -- health and start order -----------------------------------------------------------------------------------


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    # the worker's comes from the image (Dockerfile HEALTHCHECK on 8081; tests/test_deploy_dockerfile.py)
    for name in ("livekit", "postgres", "door", "ollama", "stt", "tts"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "healthcheck" not in services["worker"]
    assert "/healthz" in " ".join(services["door"]["healthcheck"]["test"])


def test_depends_on_waits_for_health_and_tolerates_absent_profiles(services: dict[str, dict[str, Any]]) -> None:
    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["livekit"]["condition"] == "service_healthy"
    assert worker_deps["postgres"]["condition"] == "service_healthy"
    assert services["door"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if services[dep].get("profiles") and not service.get("profiles"):
                # without this, `docker compose up` (no profile) refuses a dependency it does not start
                assert spec.get("required") is False, f"{name} -> {dep} must be required: false"
            if "healthcheck" in services[dep]:
                assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
            else:
                assert spec["condition"] in ("service_completed_successfully", "service_healthy"), f"{name} -> {dep}"


def test_worker_drains_before_compose_kills_it(services: dict[str, dict[str, Any]]) -> None:
    match = re.fullmatch(r"(\d+)m", services["worker"]["stop_grace_period"])
    assert match
    grace_s = int(match.group(1)) * 60
    env = services["worker"]["environment"]
    # calls end, their post-call work runs, the outbox gets its last flush, all before the SIGKILL
    assert int(env["DRAIN_TIMEOUT_S"]) + 15 + float(env["OUTBOX_FLUSH_TIMEOUT_S"]) < grace_s


@pytest.mark.parametrize("name", ["worker", "door"])
def test_every_variable_is_a_setting(services: dict[str, dict[str, Any]], name: str) -> None:
    """Settings ignore unknown variables, so a misspelt name would silently keep its default."""
    from door.settings import DoorSettings

    settings_class = DoorSettings if name == "door" else Settings
    known = {field.validation_alias for field in settings_class.model_fields.values()}
    assert set(services[name]["environment"]) <= known


# -- the self-hosted profile ----------------------------------------------------------------------------------


def test_selfhosted_env_file_turns_on_the_profile_and_its_catalog() -> None:
    env = _env_file(SELFHOSTED_ENV)
    assert env["COMPOSE_PROFILES"] == "selfhosted"
    assert (ROOT / env["VOICE_WORKER_CATALOG_DIR"]).resolve() == SELFHOSTED_CATALOG


def _pipelines(document: dict[str, Any]) -> list[dict[str, Any]]:
    if document["kind"] == "team":
        return [document["pipeline"]]
    return [r["pipeline"] for r in document["revisions"] if "pipeline" in r]


def _without_pipelines(document: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(document)
    stripped.pop("pipeline", None)
    for revision in stripped.get("revisions", []):
        revision.pop("pipeline", None)
    return stripped


def test_selfhosted_catalog_is_the_example_catalog_but_for_its_pipelines() -> None:
    examples = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert sorted(p.name for p in SELFHOSTED_CATALOG.glob("*.yaml")) == examples
    for name in examples:
        example = yaml.safe_load((EXAMPLES / name).read_text())
        selfhosted = yaml.safe_load((SELFHOSTED_CATALOG / name).read_text())
        assert _without_pipelines(selfhosted) == _without_pipelines(example), f"{name} drifted from the example"
        # everything in the pipeline but the providers and their timeouts stays as the example tuned it
        for ours, theirs in zip(_pipelines(selfhosted), _pipelines(example), strict=True):
            kept = {k for k in theirs if k not in ("stt_chain", "model_chain", "tts_chain", "fallback")}
            assert {k: ours.get(k) for k in kept} == {k: theirs[k] for k in kept}, name


def test_selfhosted_pipelines_use_only_the_compose_model_servers(services: dict[str, dict[str, Any]]) -> None:
    pulled_llms = set(services["ollama-pull"]["command"][1:])
    speech_downloads = " ".join(services["speech-models"]["command"])
    for path in SELFHOSTED_CATALOG.glob("*.yaml"):
        for pipeline in _pipelines(yaml.safe_load(path.read_text())):
            for chain in ("stt_chain", "model_chain", "tts_chain"):
                for entry in pipeline[chain]:
                    assert entry["provider"] == "openai_compatible", f"{path.name} {chain}"
                    url = urlparse(entry["base_url"])
                    assert url.hostname in MODEL_SERVER_PORTS, f"{path.name}: {entry['base_url']}"
                    assert url.port == MODEL_SERVER_PORTS[url.hostname]
                    assert "selfhosted" in services[url.hostname]["profiles"]
                    if chain == "model_chain":
                        assert entry["model"] in pulled_llms, f"{entry['model']} is not pulled"
                    else:
                        assert f"http://{url.hostname}:{url.port}/v1/models/{entry['model']}" in speech_downloads


def test_selfhosted_catalog_passes_check_without_provider_keys(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and k not in ("CATALOG_PATH", "VOICE_WORKER_MODE")
    }
    # cwd: a directory without .env, so only what is set here counts
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "check", "--catalog", str(SELFHOSTED_CATALOG)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("catalog OK")


def test_example_catalog_needs_provider_keys(tmp_path: Path) -> None:
    """The counterpart: the default stack's catalog is refused without keys, which is why the profile exists."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and k not in ("CATALOG_PATH", "VOICE_WORKER_MODE")
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "check", "--catalog", str(EXAMPLES)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "OPENAI_API_KEY" in result.stdout
