"""The README's first hour, as written: "Try a call locally" run line by line on a throwaway copy of the repository
with `.env` copied from .env.example (the lines that need no LiveKit server), its promises about the door and
web-call, and every line quoted under "Troubleshooting" being what the program prints."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from cli import main as cli
from tests.ports import free_port
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SETTINGS_NAMES = {str(field.validation_alias) for field in Settings.model_fields.values()}
# One run of a Python command on a loaded 2-core machine can take half a minute.
COMMAND_TIMEOUT_S = 240


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _local_call_block() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", _section("Try a call locally"), re.S)
    assert block, '"Try a call locally" must start with a bash block'
    lines = []
    for raw in block.group(1).splitlines():
        command = re.sub(r"\s+#.*$", "", raw).strip()
        if command:
            lines.append(command)
    return lines


def _needs_a_server(command: str) -> bool:
    """Background lines start what needs LiveKit (tests/e2e runs those against a real livekit-server)."""
    return command.endswith("&")


def test_the_block_runs_only_known_commands() -> None:
    servers = [c for c in _local_call_block() if _needs_a_server(c)]
    assert servers == [".venv/bin/voice-worker dev &"], "a new background line needs a place in these tests"
    others = [c for c in _local_call_block() if not _needs_a_server(c)]
    assert others[0] == "cp .env.example .env"
    subcommands = [re.findall(r"voice-worker (\S+)", c) for c in others[1:]]
    assert subcommands == [["check"], ["web-call"], ["web-call", "inspect-dispatch"], ["console"]]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A throwaway copy of the repository, its `.venv` the one running these tests (the README says `.venv/bin`)."""
    venv_script = Path(sys.prefix) / "bin" / "voice-worker"
    if not venv_script.exists():
        pytest.skip("the voice-worker script is not installed in this interpreter's environment")
    copy = tmp_path_factory.mktemp("fresh") / "voice-worker"
    if (ROOT / ".git").exists() and shutil.which("git"):
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        for name in filter(None, names.decode().split("\0")):
            source = ROOT / name
            if source.is_file():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy / name)
    else:
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "var", ".env", "__pycache__"))
    (copy / ".venv").symlink_to(Path(sys.prefix))
    yield copy


def _env(closed_port: int) -> dict[str, str]:
    """The machine's environment without any voice-worker setting (`.env` must carry them), and no way to reach a
    real provider: the example agents' OpenAI endpoint is a port where nothing listens."""
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS_NAMES}
    env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{closed_port}/v1"
    return env


@pytest.fixture(scope="module")
def closed_port() -> int:
    return free_port()


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # the console gets a line and then end of input, which is what Ctrl-D gives it at a terminal
    stdin = "how long do refunds take?\n" if " console " in f" {command} " else ""
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, f"{command}\n{stream}"
        assert "Warning" not in stream, f"{command}\n{stream}"  # InsecureKeyLengthWarning and friends
    return result


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    try:
        document = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON: {result}") from None
    assert isinstance(document, dict), result
    return document


def _commands() -> dict[str, str]:
    by_name: dict[str, str] = {}
    for command in _local_call_block():
        if _needs_a_server(command):
            continue
        names = re.findall(r"voice-worker (\S+)", command)
        by_name["|".join(names) or "setup"] = command
    return by_name


@pytest.mark.timeout(6 * COMMAND_TIMEOUT_S)
def test_try_a_call_locally_as_written_with_env_copied_from_the_example(checkout: Path, closed_port: int) -> None:
    commands, env = _commands(), _env(closed_port)
    assert _run(commands["setup"], checkout, env).returncode == 0
    assert (checkout / ".env").read_text() == (checkout / ".env.example").read_text()

    check = _run(commands["check"], checkout, env)
    # no provider keys yet: exit 1 and one `file: field: reason` line per key, as the block's comment says
    assert check.returncode == 1, check
    assert check.stdout and all(
        re.fullmatch(r"[\w.-]+\.yaml: \S+: provider '\w+' needs an API key: set (OPENAI|DEEPGRAM)_API_KEY", line)
        for line in check.stdout.splitlines()
    ), check.stdout

    web_call = _run(commands["web-call"], checkout, env)
    assert web_call.returncode == 0, web_call
    assert set(_json(web_call)) == {"livekit_url", "access_token", "room_name", "session_id"}

    inspected = _run(commands["web-call|inspect-dispatch"], checkout, env)
    report = _json(inspected)
    assert inspected.returncode == 3 and report["reason"] == "invalid_pipeline", inspected
    assert "OPENAI_API_KEY" in report["detail"]

    console = _run(commands["console"], checkout, env)
    assert console.returncode == 3, console
    assert console.stderr.startswith("voice-worker: refused: invalid_pipeline: ") and "OPENAI_API_KEY" in console.stderr


@pytest.mark.timeout(6 * COMMAND_TIMEOUT_S)
def test_try_a_call_locally_with_provider_keys_in_env(checkout: Path, closed_port: int) -> None:
    commands, env = _commands(), _env(closed_port)
    assert _run(commands["setup"], checkout, env).returncode == 0
    with (checkout / ".env").open("a") as dotenv:  # what the block's first comment asks for
        dotenv.write("OPENAI_API_KEY=sk-not-a-real-key\nDEEPGRAM_API_KEY=dg-not-a-real-key\n")

    check = _run(commands["check"], checkout, env)
    assert check.returncode == 0 and check.stdout.startswith("catalog OK: "), check

    inspected = _run(commands["web-call|inspect-dispatch"], checkout, env)
    assert inspected.returncode == 0, inspected
    report = _json(inspected)
    assert report["accepted"] is True and report["seeds"] == {"customer_name": "Dana"}
    assert report["agent"]["id"] == "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01"
    # the README: "records a session of type `test`"
    documented = re.search(r"records a session of type `(\w+)`", README)
    assert documented and report["claims"]["session_type"] == documented.group(1) == "test"

    console = _run(commands["console"], checkout, env)  # the provider does not answer
    assert console.returncode == 0, console
    assert "agent> Hi Dana, thanks for calling Acme support. How can I help?" in console.stdout
    failed = [line for line in console.stderr.splitlines() if "no reply" in line]
    assert len(failed) == 1 and failed[0].startswith("voice-worker: no reply: the LLM failed: openai gpt-4.1-mini ")


# --- what the README promises about the door and web-call ------------------------------------------------


def test_the_readme_gives_the_dev_door_key_the_door_accepts() -> None:
    from door.keys import DEV_API_KEY, dev_key_ring

    local = _section("Try a call locally")
    assert f"`{DEV_API_KEY}`" in local and f"x-api-key: {DEV_API_KEY}" in local
    assert dev_key_ring().authenticate(DEV_API_KEY) is not None


def test_web_calls_default_session_type_is_the_documented_one() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["web-call", "--agent-id", "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01"])
    assert args.session_type == "test"
    assert "records a session of type `test`" in _section("Try a call locally")


def test_the_revdesk_route_takes_no_context_variables_as_documented() -> None:
    contract = yaml.safe_load((ROOT / "tests" / "contracts" / "revdesk-web-call.yaml").read_text())
    operation = contract["paths"]["/v1/agents/{id}/web-call"]["post"]
    assert "requestBody" not in operation  # nothing in RevDesk's contract carries context variables
    assert "RevDesk's route" in _section("Try a call locally") and "ignored" in _section("Try a call locally")


# --- Troubleshooting: the lines quoted are the lines printed ----------------------------------------------


def _quoted_lines() -> set[str]:
    blocks = re.findall(r"```text\n(.*?)```", _section("Troubleshooting"), re.S)
    return {line for block in blocks for line in block.splitlines() if line.strip()}


async def _no_server_line() -> str:
    """What the worker logs when nothing answers at the default LIVEKIT_URL, from a real failed connection."""
    from worker.connectivity import UnreachableLiveKitFilter

    port = free_port()  # not 7880: the port livekit-server --dev uses may be taken on this machine
    async with aiohttp.ClientSession() as session:
        try:
            await session.ws_connect(f"ws://127.0.0.1:{port}/agent")
        except aiohttp.ClientError as exc:
            error: Exception = exc
        else:  # pragma: no cover - nothing listens there
            raise AssertionError("connected to a closed port")
    message = "failed to connect to livekit, retrying in 0s"  # livekit's first retry, word for word
    record = logging.LogRecord("livekit.agents", logging.WARNING, __file__, 1, message, (), None)
    record.error = error
    assert UnreachableLiveKitFilter("ws://localhost:7880").filter(record)
    return record.getMessage()


class _Held:
    """Holds 0.0.0.0:`port` unless something else already does (then it is taken all the same)."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket | None = socket.socket()
        try:
            self.sock.bind(("0.0.0.0", port))
            self.sock.listen()
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _printed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    cli.main(argv)
    out, err = capsys.readouterr()
    return (out + err).splitlines()


def test_troubleshooting_quotes_what_the_program_prints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in SETTINGS_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env: production mode, as a fresh clone without `cp .env.example .env`
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/records.db")
    root = logging.getLogger()
    handlers = list(root.handlers)
    printed: set[str] = {asyncio.run(_no_server_line())}
    try:
        # no keys: production mode, and a catalog whose provider keys are missing
        printed.update(_printed(["web-call", "--agent-id", "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01"], capsys))
        printed.update(_printed(["check"], capsys))
        # unknown agent (dev mode from here on)
        monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
        printed.update(_printed(["web-call", "--agent-id", "00000000-0000-4000-8000-000000000000"], capsys))
        # port taken: the door's and the worker's health port, at their defaults
        door = _Held(8000)
        try:
            printed.update(_printed(["door"], capsys))
        finally:
            door.close()
        health = _Held(8081)
        try:
            monkeypatch.setenv("VOICE_WORKER_MODE", "production")
            monkeypatch.setenv("LIVEKIT_API_KEY", "APIkey-for-this-test")
            monkeypatch.setenv("LIVEKIT_API_SECRET", "lk-secret-for-this-test-" + "x" * 20)
            monkeypatch.setenv("DISPATCH_SIGNING_SECRET", "dispatch-secret-for-this-test-" + "y" * 20)
            printed.update(_printed(["start"], capsys))
        finally:
            health.close()
    finally:
        root.handlers[:] = handlers
    quoted = _quoted_lines()
    assert len(quoted) == 6
    missing = quoted - printed
    assert not missing, "README Troubleshooting quotes lines the program does not print:\n" + "\n".join(missing)


def test_inspect_dispatch_names_unknown_agent_as_troubleshooting_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    from contract.dispatch import DispatchRequest, mint_dispatch_metadata
    from contract.settings import DEV_DISPATCH_SIGNING_SECRET

    monkeypatch.chdir(tmp_path)
    metadata = mint_dispatch_metadata(
        DispatchRequest(session_id=uuid.uuid4(), session_type="test", agent_id=uuid.uuid4()),
        secret=DEV_DISPATCH_SIGNING_SECRET,
        issuer="voice-worker-door",
    )
    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    monkeypatch.setattr(sys, "stdin", io.StringIO(metadata))
    assert cli.main(["inspect-dispatch"]) == cli.EXIT_REFUSED
    assert json.loads(capsys.readouterr().out)["reason"] == "unknown_agent"
    assert '`"reason": "unknown_agent"`' in _section("Troubleshooting")
