"""`worker.devserver.ensure_dev_server` against a fake `livekit-server` executable placed on PATH.

The fake is a small Python script: it records its argv, listens on the port it was given (after an optional
delay), writes `stopped` into its record when it receives SIGTERM, and can be told to exit at once instead.
No real LiveKit binary exists on these machines; the fake is what the dev-server logic sees of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port
from worker.devserver import DevServerError, accepts_connections, dev_server_command, ensure_dev_server, local_endpoint

FAKE_LIVEKIT_SERVER = textwrap.dedent(
    """\
    #!{python}
    import json, os, signal, socket, sys, time

    record = os.environ["FAKE_LK_RECORD"]
    with open(record, "w") as f:
        json.dump({{"argv": sys.argv[1:], "pid": os.getpid()}}, f)
    if os.environ.get("FAKE_LK_EXIT"):
        sys.exit(int(os.environ["FAKE_LK_EXIT"]))
    time.sleep(float(os.environ.get("FAKE_LK_DELAY", "0")))

    def on_term(signum, frame):
        with open(record, "a") as f:
            f.write("\\nstopped")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1]) if "--port" in args else 7880
    bind = args[args.index("--bind") + 1] if "--bind" in args else "0.0.0.0"
    if os.environ.get("FAKE_LK_NEVER_LISTEN"):
        while True:
            time.sleep(1)
    server = socket.create_server((bind, port))
    while True:
        conn, _ = server.accept()
        conn.close()
    """
)

READY_TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def _no_project_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the fake on PATH (or nothing) may be found: not the project's real build in .tools/bin."""
    from worker import devserver

    monkeypatch.setattr(devserver, "PROJECT_BINARIES", ())


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding the fake `livekit-server`, first on PATH; returns the record file path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "livekit-server"
    script.write_text(FAKE_LIVEKIT_SERVER.format(python=sys.executable))
    script.chmod(0o755)
    record = tmp_path / "record.json"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_LK_RECORD", str(record))
    for name in ("FAKE_LK_EXIT", "FAKE_LK_DELAY", "FAKE_LK_NEVER_LISTEN"):
        monkeypatch.delenv(name, raising=False)
    return record


def _record(path: Path) -> tuple[dict, bool]:
    first, _, rest = path.read_text().partition("\n")
    return json.loads(first), rest.strip() == "stopped"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); ours are reaped by Popen.wait, others by their parent
    return True


@pytest.fixture
def said() -> list[str]:
    return []


# -- pure parts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://localhost:7880", ("localhost", 7880)),
        ("ws://127.0.0.1:7999", ("127.0.0.1", 7999)),
        ("ws://[::1]:7880", ("::1", 7880)),
        ("ws://localhost", ("localhost", 7880)),
        ("http://127.0.0.1", ("127.0.0.1", 7880)),
        ("wss://my-project.livekit.cloud", None),
        ("ws://10.0.0.5:7880", None),
        ("ws://livekit:7880", None),
    ],
)
def test_local_endpoint(url: str, expected: tuple[str, int] | None) -> None:
    assert local_endpoint(url) == expected


def test_command_binds_loopback_and_names_only_a_non_default_port() -> None:
    assert dev_server_command("livekit-server", "localhost", 7880) == ["livekit-server", "--dev", "--bind", "127.0.0.1"]
    assert dev_server_command("livekit-server", "127.0.0.1", 7999)[-2:] == ["--port", "7999"]
    assert dev_server_command("livekit-server", "::1", 7880)[2:4] == ["--bind", "::1"]


# -- starting, or not -----------------------------------------------------------------------------------------


def test_starts_the_dev_server_when_nothing_listens_and_stops_it_on_exit(fake_bin: Path, said: list[str]) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    with ensure_dev_server(url, ready_timeout=READY_TIMEOUT, say=said.append) as server:
        assert server is not None
        assert accepts_connections("127.0.0.1", port)
        recorded, stopped = _record(fake_bin)
        assert recorded["argv"] == ["--dev", "--bind", "127.0.0.1", "--port", str(port)]
        assert recorded["pid"] == server.pid
        assert not stopped
        assert len(said) == 1 and "started `livekit-server --dev --bind 127.0.0.1" in said[0]
    assert server.process.returncode == 0  # it exited through its SIGTERM handler, not SIGKILL
    assert _record(fake_bin)[1], "the fake never saw SIGTERM"
    assert not accepts_connections("127.0.0.1", port)
    assert said[-1].startswith("stopped the livekit-server --dev")


def test_stops_the_dev_server_when_the_block_raises(fake_bin: Path, said: list[str]) -> None:
    port = free_port()
    with pytest.raises(KeyboardInterrupt), ensure_dev_server(f"ws://127.0.0.1:{port}", say=said.append) as server:
        assert server is not None
        raise KeyboardInterrupt
    assert server.process.returncode is not None
    assert not accepts_connections("127.0.0.1", port)


def test_waits_until_the_server_accepts_connections(fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LK_DELAY", "0.5")
    port = free_port()
    with ensure_dev_server(f"ws://127.0.0.1:{port}", ready_timeout=READY_TIMEOUT, say=lambda _: None) as server:
        assert server is not None
        # Not a timing assertion: the context is entered only once the port answers.
        assert accepts_connections("127.0.0.1", port)


def test_finds_the_project_build_when_path_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import devserver

    build = tmp_path / "tools" / "livekit-server"
    build.parent.mkdir()
    build.write_text("#!/bin/sh\n")
    build.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(devserver, "PROJECT_BINARIES", (build,))
    assert devserver.find_binary() == str(build)
    assert devserver.find_binary("something-else") is None
    assert dev_server_command(str(build), "localhost", 7880, "10.77.0.1")[-2:] == ["--node-ip", "10.77.0.1"]


def test_uses_what_already_listens(fake_bin: Path, said: list[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with ensure_dev_server(f"ws://localhost:{port}", say=said.append) as server:
            assert server is None
    assert not fake_bin.exists(), "livekit-server was started although the port was taken"
    assert said == [f"something already listens on localhost:{port}; using it as the LiveKit server"]


def test_does_nothing_without_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: list[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    port = free_port()
    with ensure_dev_server(f"ws://127.0.0.1:{port}", say=said.append) as server:
        assert server is None
    assert len(said) == 1
    assert "livekit-server is not on PATH" in said[0]
    assert f"127.0.0.1:{port}" in said[0]


def test_does_nothing_for_a_remote_url(fake_bin: Path, said: list[str]) -> None:
    with ensure_dev_server("wss://user:pw@my-project.livekit.cloud", say=said.append) as server:
        assert server is None
    assert not fake_bin.exists()
    assert said == ["LIVEKIT_URL wss://my-project.livekit.cloud is not on this machine; not starting a dev server"]


def test_default_say_logs_one_info_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level("INFO", logger="voice_worker.devserver"), ensure_dev_server(f"ws://127.0.0.1:{free_port()}"):
        pass
    records = [r for r in caplog.records if r.name == "voice_worker.devserver"]
    assert len(records) == 1 and records[0].levelname == "INFO"


def test_default_say_prints_to_stderr_before_logging_is_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker import devserver

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(devserver.log, "hasHandlers", lambda: False)
    with ensure_dev_server(f"ws://127.0.0.1:{free_port()}"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("voice-worker: nothing listens on 127.0.0.1:")


# -- failures -------------------------------------------------------------------------------------------------


def test_a_server_that_exits_at_once_is_an_error(fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LK_EXIT", "3")
    with (
        pytest.raises(DevServerError, match="exited with code 3"),
        ensure_dev_server(f"ws://127.0.0.1:{free_port()}", ready_timeout=READY_TIMEOUT, say=lambda _: None),
    ):
        pytest.fail("the block ran although the server never listened")


def test_a_server_that_never_listens_is_stopped_after_the_timeout(
    fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LK_NEVER_LISTEN", "1")
    with (
        pytest.raises(DevServerError, match="did not accept connections"),
        ensure_dev_server(f"ws://127.0.0.1:{free_port()}", ready_timeout=1.0, say=lambda _: None),
    ):
        pytest.fail("the block ran although the server never listened")
    recorded, stopped = _record(fake_bin)
    assert stopped, "the server that never listened was left running"
    assert not _pid_alive(recorded["pid"])


# -- exit paths of the whole process --------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """\
    import sys, time
    from worker.devserver import ensure_dev_server
    mode, url = sys.argv[1], sys.argv[2]
    cm = ensure_dev_server(url, ready_timeout=10.0, say=lambda m: print(m, flush=True))
    server = cm.__enter__()
    print("ready", server.pid, flush=True)
    if mode == "exit":
        sys.exit(0)  # leaves the block without __exit__: atexit has to stop the server
    while True:
        time.sleep(0.1)
    """
)


@contextlib.contextmanager
def _child(mode: str, port: int) -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, f"ws://127.0.0.1:{port}"],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("ready "):
                yield process, int(line.split()[1])
                break
        else:
            pytest.fail(f"the child never got ready (exit code {process.wait(10)})")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_registers_its_stop_with_atexit(fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import atexit

    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", lambda func: None)
    with ensure_dev_server(f"ws://127.0.0.1:{free_port()}", say=lambda _: None) as server:
        assert server is not None
        assert registered == [server.stop]
        registered[0]()  # what the interpreter would run at exit
        assert _record(fake_bin)[1]
        assert server.process.returncode == 0


def test_the_server_is_stopped_when_the_process_exits_inside_the_block(fake_bin: Path) -> None:
    port = free_port()
    with _child("exit", port) as (process, server_pid):
        assert process.wait(20) == 0
    assert _record(fake_bin)[1], "atexit did not stop the dev server"
    assert not _pid_alive(server_pid)
    assert not accepts_connections("127.0.0.1", port)


def test_sigterm_stops_the_server_then_the_process_dies_of_sigterm(fake_bin: Path) -> None:
    port = free_port()
    with _child("wait", port) as (process, server_pid):
        assert accepts_connections("127.0.0.1", port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == -signal.SIGTERM
    assert _record(fake_bin)[1], "SIGTERM did not stop the dev server"
    assert not _pid_alive(server_pid)


def test_leaves_a_sigterm_handler_installed_by_someone_else_alone(fake_bin: Path) -> None:
    def theirs(signum: int, frame: object) -> None:
        raise AssertionError("not expected to run")

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        with ensure_dev_server(f"ws://127.0.0.1:{free_port()}", say=lambda _: None) as server:
            assert server is not None
            assert signal.getsignal(signal.SIGTERM) is theirs
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_restores_the_default_sigterm_disposition(fake_bin: Path) -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with ensure_dev_server(f"ws://127.0.0.1:{free_port()}", say=lambda _: None):
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stop_is_idempotent(fake_bin: Path) -> None:
    with ensure_dev_server(f"ws://127.0.0.1:{free_port()}", say=lambda _: None) as server:
        assert server is not None
        first = server.stop()
        assert first == 0
        assert server.stop() is None
