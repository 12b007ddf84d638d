"""What a newcomer meets in the first hour (issue 15): settings copied from .env.example, one line per problem,
no command ending in a traceback, a console that survives a dead provider, quiet dev output, no machine paths,
one set of per-call memory figures."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from calls.call import CallServices
from catalog.loader import CatalogStore
from cli import main as cli
from cli.console import run_console, text_session_kwargs
from contract.settings import DEV_DISPATCH_SIGNING_SECRET, EXAMPLE_CATALOG, SettingsError
from door.settings import DoorSettings, load_door_settings
from worker.connectivity import REPEAT_AT_LEAST_S, UnreachableLiveKitFilter
from worker.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01"
KEYS = {"OPENAI_API_KEY": "sk-test-not-real", "DEEPGRAM_API_KEY": "dg-test-not-real"}
SECRET_NAMES = ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "DISPATCH_SIGNING_SECRET")


def _clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets counts (conftest.py puts the whole run in dev mode)."""
    for field in Settings.model_fields.values():
        monkeypatch.delenv(str(field.validation_alias), raising=False)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`door` in production installs JSON logging on the root logger, bound to this test's captured stderr."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def newcomer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory with `.env` copied from .env.example, as the README says, and nothing else set."""
    _clear_settings_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    return tmp_path


# --- 1. settings ------------------------------------------------------------------------------------------


def test_env_example_copied_to_dotenv_gives_dev_mode_with_every_empty_value_unset(newcomer: Path) -> None:
    settings = Settings()
    assert settings.is_dev
    # `KEY=` lines: the dev defaults apply instead of empty keys (web-call's "HMAC key must not be empty", the
    # worker's "api_key is required")
    assert settings.livekit_credentials() == ("devkey", "secret")
    assert settings.signing_secret() == DEV_DISPATCH_SIGNING_SECRET
    # not Path("") == Path("."), a directory the door then failed to read
    assert DoorSettings().door_api_keys_file is None
    assert settings.postcall_webhook_url is None and settings.openai_api_key is None
    # .env.example's own comment: metrics are off in dev unless PROMETHEUS_PORT is set
    assert settings.metrics_port is None


def test_an_empty_environment_variable_is_unset_too(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_settings_env(monkeypatch)
    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    monkeypatch.setenv("DISPATCH_SIGNING_SECRET", "")
    monkeypatch.setenv("DOOR_API_KEYS_FILE", "")
    monkeypatch.setenv("DRAIN_TIMEOUT_S", "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings' init-only option
    assert settings.signing_secret() == DEV_DISPATCH_SIGNING_SECRET
    assert DoorSettings(_env_file=None).door_api_keys_file is None  # type: ignore[call-arg]  # pydantic-settings' init-only option
    assert settings.drain_timeout_s == 600


def test_the_door_of_a_copied_env_example_serves_the_dev_key(newcomer: Path) -> None:
    from door.keys import DEV_API_KEY, key_ring_for

    ring = key_ring_for(DoorSettings())  # DOOR_API_KEYS_FILE= is unset, not the directory "."
    key = ring.authenticate(DEV_API_KEY)
    assert key is not None and key.name == "dev"


def test_every_wrong_setting_is_one_line_naming_it_and_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_settings_env(monkeypatch)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, JOB_EXECUTOR="fiber", DATABASE_URL=None, DRAIN_TIMEOUT_S="0")
    problems = info.value.problems
    assert sorted(p.split(":", 1)[0] for p in problems) == ["DATABASE_URL", "DRAIN_TIMEOUT_S", "JOB_EXECUTOR"]
    with pytest.raises(SettingsError) as door:
        load_door_settings(_env_file=None, DOOR_PORT="eighty")
    assert [p.split(":", 1)[0] for p in door.value.problems] == ["DOOR_PORT"]
    problems = (*problems, *door.value.problems)
    for problem in problems:
        variable = problem.split(":", 1)[0]
        assert "\n" not in problem and f"fix {variable} in .env or the environment" in problem
    assert "fiber" not in str(info.value) and "eighty" not in str(door.value), "a value was echoed"


def test_production_names_each_missing_secret_and_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_settings_env(monkeypatch)
    settings = Settings(_env_file=None, VOICE_WORKER_MODE="production")  # type: ignore[call-arg]  # init-only option
    with pytest.raises(SettingsError) as info:
        settings.require_production_secrets()
    assert [p.split(" ", 1)[0] for p in info.value.problems] == list(SECRET_NAMES)
    assert all("VOICE_WORKER_MODE=dev" in p for p in info.value.problems)
    with pytest.raises(SettingsError, match="VOICE_WORKER_MODE=dev"):
        settings.signing_secret()
    with pytest.raises(SettingsError, match="VOICE_WORKER_MODE=dev"):
        settings.livekit_credentials()


@pytest.mark.parametrize(
    "argv",
    [
        ["web-call", "--agent-id", SUPPORT],
        ["console", "--agent-id", SUPPORT],
        ["inspect-dispatch"],
        ["door"],
    ],
)
def test_commands_that_need_dev_mode_say_so_one_line_per_secret(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    unused_port: int,
) -> None:
    _clear_settings_env(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DOOR_PORT", str(unused_port))  # a port someone holds must not decide this test
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"grant": "x"}'))
    assert cli.main(argv) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("voice-worker: ") for line in lines), err
    assert all("VOICE_WORKER_MODE=dev" in line for line in lines), err
    assert any(name in line for line in lines for name in SECRET_NAMES)
    assert "Traceback" not in out + err


def test_env_example_leaves_prometheus_port_unset_as_its_comment_says() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    assert not any(line.startswith("PROMETHEUS_PORT=") for line in lines)
    assert "# PROMETHEUS_PORT=9100" in lines


# --- 2. no command ends in a traceback -------------------------------------------------------------------


@pytest.fixture
def dev_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clear_settings_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/records.db")
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)


@pytest.mark.timeout(300)  # one subprocess, on a machine that may be busy
def test_web_call_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    settings_names = {str(field.validation_alias) for field in Settings.model_fields.values()}
    env = {name: value for name, value in os.environ.items() if name not in settings_names}
    env.update(VOICE_WORKER_MODE="dev", DATABASE_URL=f"sqlite:///{tmp_path}/records.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "web-call", "--agent-id", SUPPORT, "--var", "customer_name=Dana"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has already gone: the command's one write meets a closed pipe
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=180)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert code == cli.EXIT_BROKEN_PIPE


@pytest.mark.usefixtures("dev_env")
def test_web_call_with_an_unreachable_database_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://user:pw-not-to-show@127.0.0.1:1/voice")
    assert cli.main(["web-call", "--agent-id", SUPPORT]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("voice-worker: DATABASE_URL: ") and "pw-not-to-show" not in err


@pytest.mark.usefixtures("dev_env")
def test_an_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_: object) -> int:
        raise RuntimeError("catalog store exploded\nsecond line")

    monkeypatch.setattr(cli, "check", broken)
    assert cli.main(["check"]) == 1
    assert capsys.readouterr().err == "voice-worker: check failed: RuntimeError: catalog store exploded\n"


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, EOFError])
def test_ctrl_c_and_ctrl_d_end_a_command_with_exit_0(
    interrupt: type[BaseException], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_: object) -> int:
        raise interrupt

    monkeypatch.setattr(cli, "check", interrupted)
    assert cli.main(["check"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("dev_env")
def test_inspect_dispatch_reads_what_web_call_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["web-call", "--agent-id", SUPPORT, "--var", "customer_name=Dana"]) == 0
    printed = capsys.readouterr().out
    for given in (printed, json.loads(printed)["access_token"]):
        monkeypatch.setattr(sys, "stdin", io.StringIO(given))
        assert cli.main(["inspect-dispatch"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["accepted"] is True and report["seeds"]["customer_name"] == "Dana"
        assert report["claims"]["session_type"] == "test"  # web-call's default, as the README says
    monkeypatch.setattr(sys, "stdin", io.StringIO(printed.replace('"access_token": "ey', '"access_token": "ex')))
    assert cli.main(["inspect-dispatch"]) == cli.EXIT_REFUSED
    assert "access_token" in capsys.readouterr().err


def test_web_call_is_quiet_about_the_dev_secret_length_but_not_about_a_real_short_one(
    dev_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jwt.warnings import InsecureKeyLengthWarning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert cli.main(["web-call", "--agent-id", SUPPORT]) == 0
    assert not [w for w in seen if issubclass(w.category, InsecureKeyLengthWarning)]
    monkeypatch.setenv("LIVEKIT_API_SECRET", "short-real-secret")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert cli.main(["web-call", "--agent-id", SUPPORT]) == 0
    assert [w for w in seen if issubclass(w.category, InsecureKeyLengthWarning)]
    capsys.readouterr()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _retry_record(attempt: int) -> logging.LogRecord:
    message = f"failed to connect to livekit, retrying in {min(attempt * 2, 10)}s"  # livekit's wording
    record = logging.LogRecord("livekit.agents", logging.WARNING, __file__, 1, message, (), None)
    record.error = OSError("connection refused")
    return record


def test_the_unreachable_livekit_line_is_rate_limited() -> None:
    clock = _Clock()
    only = UnreachableLiveKitFilter("ws://localhost:7880", clock=clock)
    shown = []
    for attempt in range(1, 21):
        clock.now += 10
        record = _retry_record(attempt)
        if only.filter(record):
            shown.append((attempt, record.getMessage()))
    assert [a for a, _ in shown] == [1, 4, 8, 16]
    assert shown[0][1].startswith("cannot reach LiveKit at ws://localhost:7880 (OSError); ")
    assert shown[1][1].startswith("still cannot reach LiveKit at ws://localhost:7880 (OSError) after 4 attempts")
    clock.now += REPEAT_AT_LEAST_S
    assert only.filter(_retry_record(21)), "a long outage still shows at least every REPEAT_AT_LEAST_S"
    registered = logging.LogRecord("livekit.agents", logging.INFO, __file__, 1, "registered worker", (), None)
    assert only.filter(registered)
    first_again = _retry_record(1)
    assert only.filter(first_again) and first_again.getMessage().startswith("cannot reach LiveKit")


@pytest.mark.timeout(300)
def test_a_failed_worker_is_one_log_line_and_a_non_zero_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """livekit's CLI logs "worker failed" with a traceback and exits 0 (the .env case: "api_key is required")."""
    from worker import connectivity

    monkeypatch.setattr(connectivity, "_failure", None)
    livekit_log = logging.getLogger("livekit.agents")
    filters, stream = list(livekit_log.filters), io.StringIO()
    handler = logging.StreamHandler(stream)
    livekit_log.addHandler(handler)

    def worker_that_fails(args: object, *, dev: bool) -> int:
        connectivity.install("ws://localhost:7880")
        try:
            raise ValueError("api_key is required, or set LIVEKIT_API_KEY environment variable")
        except ValueError:
            livekit_log.exception("worker failed")  # what livekit/agents/cli/cli.py does
        return 0  # and then livekit_main returns as if all were well

    monkeypatch.setattr(cli, "run_worker", worker_that_fails)
    try:
        assert cli.main(["start"]) == cli.EXIT_PROBLEMS
    finally:
        livekit_log.removeHandler(handler)
        livekit_log.filters[:] = filters
    assert (
        stream.getvalue() == "the worker stopped: ValueError: api_key is required, or set LIVEKIT_API_KEY "
        "environment variable\n"
    )


async def test_console_with_an_unreachable_provider_names_it_and_keeps_the_conversation(
    monkeypatch: pytest.MonkeyPatch, unused_port: int
) -> None:
    # the example agents' OpenAI models, pointed at a port where nothing listens
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{unused_port}/v1")
    settings = Settings(_env_file=None, VOICE_WORKER_MODE="dev", **KEYS)  # type: ignore[call-arg]  # init-only option
    services = CallServices(
        settings=settings,
        catalog=CatalogStore(EXAMPLE_CATALOG),
        session_kwargs=text_session_kwargs(settings),
        text_only=True,
    )
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for line in ("how long do refunds take?", "hello?", None):  # None: Ctrl-D
        lines.put_nowait(line)
    err = io.StringIO()
    code = await asyncio.wait_for(
        run_console(
            settings,
            agent_id=uuid.UUID(SUPPORT),
            team_id=None,
            seeds={"customer_name": "Dana"},
            services=services,
            lines=lines,
            err=err,
        ),
        timeout=120,
    )
    assert code == 0
    failed = [line for line in err.getvalue().splitlines() if "no reply" in line]
    assert len(failed) == 2, err.getvalue()  # the second turn was tried too: the session stayed open
    for line in failed:
        assert line.startswith("voice-worker: no reply: the LLM failed: openai gpt-4.1-mini (APIConnectionError")
        assert "openai gpt-4o-mini (" in line and "OPENAI_API_KEY" in line and "Ctrl-D" in line


@pytest.mark.timeout(400)
@pytest.mark.parametrize("ending", ["ctrl-c", "ctrl-d"])
def test_console_after_a_failed_turn_ends_on_ctrl_c_and_ctrl_d_with_exit_0(
    ending: str, tmp_path: Path, unused_port: int
) -> None:
    import queue
    import signal
    import threading
    import time

    settings_names = {str(field.validation_alias) for field in Settings.model_fields.values()}
    env = {name: value for name, value in os.environ.items() if name not in settings_names}
    env.update(KEYS, VOICE_WORKER_MODE="dev", OPENAI_BASE_URL=f"http://127.0.0.1:{unused_port}/v1")
    # Started as a terminal starts its foreground job, with Ctrl-C's default action. A child inherits an ignored
    # SIGINT, and a test run started in the background of a non-interactive shell (`.ci/run &`) ignores it: the
    # console then ignored Ctrl-C too, which is what it should do there, and this test waited 120 s for it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "console", "--agent-id", SUPPORT, "--var", "customer_name=Dana"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert proc.stdin is not None and proc.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    stderr = proc.stderr
    threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True).start()
    seen: list[str] = []

    def wait_for(needle: str) -> None:
        deadline = time.monotonic() + 240
        while not any(needle in line for line in seen):
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, f"exited {proc.returncode} before {needle!r}:\n" + "".join(seen)
                assert time.monotonic() < deadline, f"no {needle!r} in:\n" + "".join(seen)

    try:
        wait_for("(type a message")
        proc.stdin.write("how long do refunds take?\n")
        proc.stdin.flush()
        wait_for("no reply: the LLM failed")
        if ending == "ctrl-c":
            proc.send_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        else:
            proc.stdin.close()  # end of input: what the terminal gives on Ctrl-D
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    while not lines.empty():
        seen.append(lines.get())
    assert code == 0, "".join(seen)
    assert not any("Traceback" in line for line in seen), "".join(seen)


@pytest.fixture
def unused_port() -> int:
    from tests.ports import free_port

    return free_port()


# --- 4. no machine paths; one set of figures -------------------------------------------------------------


def _tracked_text_files() -> list[Path]:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = []
    for name in names.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file():
            files.append(path)
    return files


def test_no_machine_paths_in_tracked_files() -> None:
    # spelled in pieces so that this file does not match itself
    patterns = ["/" + "work/", "/tmp/" + "studio"]
    found = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(p in line for p in patterns):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


_PER_CALL = re.compile(r"~(\d+(?:\.\d+)?) MB(?: PSS| \(PSS\))?(?: per call| \|)")


def _density_table_figures() -> set[str]:
    """Marginal PSS per call of each executor, from the README's density table (benchmarks/density.py's run)."""
    figures = set()
    column = None
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
        if "marginal PSS per call" in cells:
            column = cells.index("marginal PSS per call")
        elif column is not None and line.startswith("| `JOB_EXECUTOR="):
            megabytes = float(cells[column].removesuffix(" MB"))
            figures.add(f"{megabytes:.0f}" if megabytes >= 10 else f"{megabytes:g}")
    assert len(figures) == 2, figures
    return figures


def test_per_call_memory_figures_agree_everywhere() -> None:
    measured = _density_table_figures()
    places = [ROOT / "README.md", ROOT / ".env.example", ROOT / "worker" / "settings.py"]
    places.append(ROOT / "docs" / "operations.md")
    places += sorted((ROOT / "deploy" / "k8s").glob("*"))
    seen: dict[str, set[str]] = {}
    for path in places:
        if path.is_file():
            for figure in _PER_CALL.findall(path.read_text()):
                seen.setdefault(figure, set()).add(str(path.relative_to(ROOT)))
    assert set(seen) == measured, f"per-call figures {seen} differ from the density table's {measured}"
