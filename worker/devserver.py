"""`voice-worker dev` on a laptop: start `livekit-server --dev` when none is running, and stop it again.

`ensure_dev_server(url)` is a context manager around the worker's run. It starts the dev server only when all
of these hold: `url` points at this machine (localhost, 127.0.0.1 or ::1), nothing accepts connections on its
port yet, and `livekit-server` is on PATH or is the project's own build (`.tools/bin/livekit-server`, which
scripts/setup installs). Otherwise it does nothing and says why in one line. A server it
started is bound to loopback only (its keys, devkey/secret, are public) and is stopped when the block exits,
when the process exits through `atexit`, or on SIGTERM while nobody else handles that signal. A dev server
orphaned by a hard kill is harmless: the next `voice-worker dev` finds the port taken and uses it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlparse

log = logging.getLogger("voice_worker.devserver")

BINARY = "livekit-server"
# Where scripts/install-livekit-server puts the pinned build; looked at when PATH has no livekit-server, so the
# README's `scripts/setup && .venv/bin/voice-worker dev` works without touching PATH.
PROJECT_BINARIES: tuple[Path, ...] = (Path(__file__).resolve().parents[1] / ".tools" / "bin" / BINARY,)
# The port `livekit-server --dev` listens on unless told otherwise.
DEFAULT_PORT = 7880
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_POLL_S = 0.05
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"ws": DEFAULT_PORT, "http": DEFAULT_PORT, "wss": 443, "https": 443}

Say = Callable[[str], None]


class DevServerError(RuntimeError):
    """The dev server was started but never accepted connections (it exited, or took too long)."""


def local_endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) of `url` when it points at this machine, else None."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    if host not in _LOCAL_HOSTS:
        return None
    try:
        port = parsed.port
    except ValueError:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(parsed.scheme)
    if port is None:
        return None
    return host, port


def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def die_with_parent() -> None:
    """In a child between fork and exec: SIGTERM it when the process that started it dies, however it dies.

    The parts of the local stack run in sessions of their own (Ctrl-C reaches only the stack, which stops them in
    order), so a stack killed hard (SIGKILL, a crashed terminal) would otherwise leave them running, holding their
    ports and calls. Linux's PR_SET_PDEATHSIG; elsewhere nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def dev_server_command(binary: str, host: str, port: int, node_ip: str | None = None) -> list[str]:
    """The command line: signalling on loopback only, `--port` only when the URL asks for a non-default port, and
    `--node-ip` (the address put in the server's ICE candidates) only when given: by default the server picks this
    machine's first non-loopback address, which a browser on the same machine reaches without leaving it."""
    bind = "::1" if host == "::1" else "127.0.0.1"
    command = [binary, "--dev", "--bind", bind]
    if port != DEFAULT_PORT:
        command += ["--port", str(port)]
    if node_ip:
        command += ["--node-ip", node_ip]
    return command


def find_binary(binary: str = BINARY) -> str | None:
    """`binary` on PATH, else the project's own build; None when neither exists."""
    found = shutil.which(binary)
    if found is not None:
        return found
    if binary == BINARY:
        for candidate in PROJECT_BINARIES:
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


class DevServer:
    """A `livekit-server --dev` this process started. `stop()` is idempotent."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, log_file: IO[bytes], say: Say) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.log_path = Path(log_file.name)
        self._log_file = log_file
        self._say = say
        self._owner_pid = os.getpid()
        self._stopped = False
        self._owns_sigterm = False
        atexit.register(self.stop)
        self._take_sigterm()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int | None:
        """Terminate the server (SIGTERM, then SIGKILL after STOP_TIMEOUT_S); its exit code, or None if not ours."""
        # A forked child inherits atexit handlers; only the process that started the server stops it.
        if self._stopped or os.getpid() != self._owner_pid:
            return None
        self._stopped = True
        atexit.unregister(self.stop)
        self._give_back_sigterm()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        self._say(f"stopped the livekit-server --dev it had started (pid {self.pid})")
        return self.process.returncode

    # SIGTERM: only while nobody else handles it, and only from the main thread (where handlers live). The
    # worker's own handler replaces ours once it runs; it then returns normally and the `with` block stops us.
    def _take_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._owns_sigterm = True

    def _give_back_sigterm(self) -> None:
        if not self._owns_sigterm or threading.current_thread() is not threading.main_thread():
            return
        self._owns_sigterm = False
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stop()
        # Die of SIGTERM as the process would have without us.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _default_say(message: str) -> None:
    # `voice-worker dev` calls this before livekit sets up logging; a record nobody handles would be lost.
    if log.hasHandlers():
        log.info(message)
    else:
        print(f"voice-worker: {message}", file=sys.stderr)


def ensure_dev_server(
    url: str,
    *,
    binary: str = BINARY,
    ready_timeout: float = READY_TIMEOUT_S,
    say: Say | None = None,
    node_ip: str | None = None,
) -> contextlib.AbstractContextManager[DevServer | None]:
    """Run the enclosed block with a LiveKit dev server at `url`, starting one if needed (see module doc).

    Yields the `DevServer` it started, or None when it started nothing. Raises `DevServerError` when a server
    it started does not accept connections within `ready_timeout` seconds. `say` receives the one line that
    tells what happened (default: an INFO log record on `voice_worker.devserver`).
    """
    return _ensure(url, binary, ready_timeout, say or _default_say, node_ip)


@contextlib.contextmanager
def _ensure(url: str, binary: str, ready_timeout: float, say: Say, node_ip: str | None) -> Iterator[DevServer | None]:
    endpoint = local_endpoint(url)
    if endpoint is None:
        say(f"LIVEKIT_URL {_without_credentials(url)} is not on this machine; not starting a dev server")
        yield None
        return
    host, port = endpoint
    if accepts_connections(host, port):
        say(f"something already listens on {host}:{port}; using it as the LiveKit server")
        yield None
        return
    path = find_binary(binary)
    if path is None:
        say(
            f"nothing listens on {host}:{port} and {binary} is not on PATH (nor in .tools/bin: scripts/setup "
            f"builds it); start a LiveKit server (`{binary} --dev`) or point LIVEKIT_URL at LiveKit Cloud"
        )
        yield None
        return
    server = _start(path, host, port, ready_timeout, say, node_ip)
    try:
        yield server
    finally:
        server.stop()


def _start(path: str, host: str, port: int, ready_timeout: float, say: Say, node_ip: str | None) -> DevServer:
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - outlives this function; DevServer.stop() closes it
        prefix="livekit-server-", suffix=".log", delete=False
    )
    command = dev_server_command(path, host, port, node_ip)
    # A session of its own: Ctrl+C in the terminal reaches the worker only, which then stops this server
    # after it has disconnected, instead of both dying at once.
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    server = DevServer(process, host, port, log_file, say)
    deadline = time.monotonic() + ready_timeout
    while not accepts_connections(host, port, timeout=_POLL_S):
        code = process.poll()
        if code is not None:
            server.stop()
            raise DevServerError(
                f"{Path(path).name} exited with code {code} before accepting connections on {host}:{port}; "
                f"its output is in {server.log_path}"
            )
        if time.monotonic() >= deadline:
            server.stop()
            raise DevServerError(
                f"{Path(path).name} did not accept connections on {host}:{port} within {ready_timeout:g} s; "
                f"its output is in {server.log_path}"
            )
        time.sleep(_POLL_S)
    say(
        f"started `{' '.join([Path(path).name, *command[1:]])}` (pid {process.pid}; output in {server.log_path}); "
        "it stops when the worker exits"
    )
    return server


def _without_credentials(url: str) -> str:
    parsed = urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    netloc = parsed.hostname or ""
    if parsed.port is not None:
        netloc = f"{netloc}:{parsed.port}"
    return parsed._replace(netloc=netloc).geturl()
