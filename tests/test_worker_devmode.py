"""`voice-worker dev` runs the worker inside `ensure_dev_server(LIVEKIT_URL)`; `voice-worker start` does not, and
logs JSON. livekit's `start` command and the dev-server helper are replaced by recorders: what they do themselves
is tested in tests/test_worker_drain.py and tests/test_deploy_devserver.py (and the last test here reaches
livekit's real command line, up to its usage errors)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from cli import main as cli
from cli import worker_commands
from worker import devserver

URL = "ws://localhost:7880"


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    seen: list[tuple[str, object]] = []

    @contextlib.contextmanager
    def ensure_dev_server(url: str) -> Iterator[None]:
        seen.append(("dev server up", url))
        yield None
        seen.append(("dev server down", url))

    def livekit_main(argv: list[str]) -> int:
        seen.append(("worker", argv))
        return 0

    monkeypatch.setattr(devserver, "ensure_dev_server", ensure_dev_server)
    monkeypatch.setattr(worker_commands, "livekit_start", livekit_main)
    # run_worker exports these for the job processes; keep them out of the other tests
    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    monkeypatch.setenv("CATALOG_PATH", str(worker_commands.APP.parent.parent / "catalog" / "examples"))
    monkeypatch.setenv("LIVEKIT_URL", URL)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test-not-real")
    monkeypatch.delenv("PROMETHEUS_PORT", raising=False)
    return seen


def test_dev_runs_the_worker_while_the_dev_server_is_up(events: list[tuple[str, object]]):
    assert cli.main(["dev", "--worker-only"]) == 0
    assert [kind for kind, _ in events] == ["dev server up", "worker", "dev server down"]
    assert events[0][1] == URL
    assert events[1][1] == ["start", str(worker_commands.APP), "--log-level", "INFO", "--dev"]


def test_start_logs_json_and_starts_no_dev_server(events: list[tuple[str, object]], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LIVEKIT_API_KEY", "APIstart3Hn8")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "lk-start-secret-0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    monkeypatch.setenv("DISPATCH_SIGNING_SECRET", "dispatch-start-signing-a1b2c3d4e5f60718293a4b5c")
    monkeypatch.setenv("PROMETHEUS_PORT", "0")
    assert cli.main(["start"]) == 0
    assert events == [("worker", ["start", str(worker_commands.APP), "--log-level", "INFO", "--log-format", "json"])]


def test_the_worker_is_handed_to_livekits_documented_command_line(capsys: pytest.CaptureFixture[str]):
    """`python -m livekit.agents`, run in this process: its own usage and exit statuses come back."""
    assert worker_commands.livekit_start(["--help"]) == 0
    assert "python -m livekit.agents" in capsys.readouterr().out
    assert worker_commands.livekit_start(["start", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
