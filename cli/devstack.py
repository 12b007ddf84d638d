"""`voice-worker dev`: the whole local stack in one command, on the embedded defaults.

Three parts, each announced in one line with its address once it is up, then the call page's URL:
1. LiveKit: `LIVEKIT_URL` (or `--livekit-url`) when it names a server; on this machine with nothing listening
   there, a `livekit-server --dev` started for the stack's lifetime (worker/devserver.py: from PATH or the
   project's `.tools/bin`, built by scripts/setup).
2. The worker: `voice-worker dev --worker-only` (the worker alone, dev mode: livekit-server --dev's public keys and
   a marked dev-only signing secret; `voice-worker start` refuses both), as a child process.
3. The door with its call page: `voice-worker door` in dev mode, as a child process, on `127.0.0.1:8000` unless
   `DOOR_PORT` (or `--door-port`) or a specific `DOOR_HOST` address say otherwise: the dev door accepts a public
   key, so a wildcard DOOR_HOST is narrowed to loopback.

The children run in sessions of their own, so Ctrl-C reaches this process only, which stops the parts in the
order that lets calls end well: the door first (no new calls), then the worker with SIGTERM (it refuses new
offers and lets active calls drain, up to DRAIN_TIMEOUT_S), and LiveKit last, once the worker is gone. A second
Ctrl-C passes on to the worker, which then exits at once. Each child's output goes to a log file named at start;
its warnings and errors are echoed here with the part's name (`--verbose`: every line).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from door.settings import DoorSettings
from worker.devserver import DevServerError, accepts_connections, die_with_parent, ensure_dev_server, local_endpoint
from worker.settings import Settings

READY_TIMEOUT_S = 90.0
DOOR_STOP_TIMEOUT_S = 15.0
# After the worker's own drain: livekit's CLI needs a few seconds to close its job processes and the connection.
WORKER_STOP_GRACE_S = 30.0
_POLL_S = 0.2
# Lines worth a person's attention when they are not reading the log files: livekit's dev format and JSON logs.
_NOTABLE = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL|Traceback)\b|\"level\": ?\"(warning|error|critical)\"", re.I)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# An echoed line is a pointer to the log, not the log: long records (stack samples) are cut.
_ECHO_CHARS = 300

Say = Callable[[str], None]


def _say(message: str) -> None:
    print(message, flush=True)


@dataclass
class StackOptions:
    livekit_url: str | None = None
    door_port: int | None = None
    node_ip: str | None = None
    catalog: str | None = None
    log_level: str = "INFO"
    verbose: bool = False


@dataclass
class Part:
    """One child process of the stack and the thread copying its output to its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _relay: threading.Thread | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()

    def join(self) -> None:
        if self._relay is not None:
            self._relay.join(5)


def _relay(part_name: str, stream: IO[bytes], log_file: IO[bytes], verbose: bool, say: Say) -> None:
    with log_file:
        for raw in iter(stream.readline, b""):
            log_file.write(raw)
            log_file.flush()
            line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip()
            if line and (verbose or _NOTABLE.search(line)):
                cut = line if verbose or len(line) <= _ECHO_CHARS else line[:_ECHO_CHARS] + " …"
                say(f"{part_name:>7} | {cut}")


def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path, verbose: bool, say: Say) -> Part:
    log_path = logs / f"{name}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 -- closed by the relay thread when the child's output ends
    # A session of its own: Ctrl-C in the terminal reaches the stack only, which stops the parts in order.
    process = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    assert process.stdout is not None
    relay = threading.Thread(
        target=_relay, args=(name, process.stdout, log_file, verbose, say), name=f"dev-{name}-log", daemon=True
    )
    relay.start()
    return Part(name, process, log_path, relay)


def _wait_http(url: str, part: Part, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not part.alive():
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(_POLL_S)
    return False


@dataclass
class DevStack:
    settings: Settings
    door_settings: DoorSettings
    options: StackOptions
    say: Say = _say
    parts: list[Part] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _interrupts: int = 0

    # --- what the children get ---------------------------------------------------------------------------------

    def child_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VOICE_WORKER_MODE="dev",
            LIVEKIT_URL=self.settings.livekit_url,
            CATALOG_PATH=str(self.settings.catalog_path),
            # the children's output is a pipe: without this their lines would arrive in 4 KiB bursts
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    @property
    def door_host(self) -> str:
        # The dev door accepts a public key: a wildcard (production's default, and .env.example's) is narrowed to
        # loopback; a specific address in DOOR_HOST is the operator's deliberate choice and is kept.
        host = self.door_settings.door_host
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    @property
    def door_port(self) -> int:
        return self.options.door_port or self.door_settings.door_port

    def door_url(self) -> str:
        host = "127.0.0.1" if self.door_host in ("0.0.0.0", "::", "") else self.door_host
        return f"http://{host}:{self.door_port}"

    def health_url(self) -> str:
        host = "127.0.0.1" if self.settings.health_host in ("0.0.0.0", "::", "") else self.settings.health_host
        return f"http://{host}:{self.settings.health_port}/ready"

    # --- running -------------------------------------------------------------------------------------------------

    def run(self) -> int:
        url = self.settings.livekit_url
        try:
            with ensure_dev_server(url, say=lambda _m: None, node_ip=self.options.node_ip) as server:
                endpoint = local_endpoint(url)
                if server is not None:
                    self.say(f"livekit  {url}  (livekit-server --dev, pid {server.pid}, log {server.log_path})")
                elif endpoint is not None and not accepts_connections(*endpoint):
                    self.say(
                        f"voice-worker dev: nothing listens at {url} and livekit-server is not installed: run "
                        "scripts/setup (it builds the pinned server with Go), start `livekit-server --dev`, or name "
                        "a server with --livekit-url / LIVEKIT_URL"
                    )
                    return 2
                elif endpoint is None:
                    self.say(f"livekit  {url}  (named by --livekit-url / LIVEKIT_URL)")
                else:
                    self.say(f"livekit  {url}  (already running; not started by voice-worker dev)")
                return self._run_children()
        except DevServerError as exc:
            self.say(f"voice-worker dev: {exc}")
            return 1

    def _run_children(self) -> int:
        logs = Path(tempfile.mkdtemp(prefix="voice-worker-dev-"))
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._start_and_watch(logs)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.say(f"stopped; logs in {logs}")

    def _start_and_watch(self, logs: Path) -> int:
        cli = [sys.executable, "-m", "cli.main"]
        catalog = ["--catalog", self.options.catalog] if self.options.catalog else []
        door = _spawn(
            "door",
            [*cli, "door"],
            self.child_env(DOOR_HOST=self.door_host, DOOR_PORT=str(self.door_port)),
            logs,
            self.options.verbose,
            self.say,
        )
        self.parts.append(door)
        worker = _spawn(
            "worker",
            [*cli, "dev", "--worker-only", "--log-level", self.options.log_level, *catalog],
            self.child_env(),
            logs,
            self.options.verbose,
            self.say,
        )
        self.parts.append(worker)

        if not _wait_http(f"{self.door_url()}/healthz", door, READY_TIMEOUT_S) or self._stopping.is_set():
            return self._failed(door)
        self.say(f"door     {self.door_url()}/v1/voice/web-call  (dev key; log {door.log_path})")
        if not _wait_http(self.health_url(), worker, READY_TIMEOUT_S) or self._stopping.is_set():
            return self._failed(worker)
        self.say(
            f"worker   registered as {self.settings.agent_name!r}  (health {self.health_url()}; log {worker.log_path})"
        )
        self.say(f"call page  {self.door_url()}/   (Ctrl-C stops everything; active calls drain first)")
        while not self._stopping.wait(_POLL_S):
            for part in self.parts:
                if not part.alive():
                    self.say(f"voice-worker dev: the {part.name} exited with {part.process.returncode}; stopping")
                    return 1
        return 0

    def _failed(self, part: Part) -> int:
        if self._stopping.is_set():
            return 0
        what = f"exited with {part.process.returncode}" if not part.alive() else f"not ready in {READY_TIMEOUT_S:g} s"
        tail = part.log_path.read_text(errors="replace").strip().splitlines()[-8:]
        self.say(f"voice-worker dev: the {part.name} {what}; the end of {part.log_path}:")
        for line in tail:
            self.say(f"  {line}")
        return 1

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.say("stopping: door, then the worker (active calls drain; Ctrl-C again to stop at once), then LiveKit")
            self._stopping.set()
            return
        # livekit's CLI exits at once on a second signal
        for part in self.parts:
            part.signal(signal.SIGTERM)

    def _stop_all(self) -> None:
        by_name = {p.name: p for p in self.parts}
        door, worker = by_name.get("door"), by_name.get("worker")
        if door is not None:
            door.signal(signal.SIGTERM)
            if door.wait(DOOR_STOP_TIMEOUT_S) is None:
                door.kill()
        if worker is not None:
            worker.signal(signal.SIGTERM)
            if worker.wait(self.settings.drain_timeout_s + WORKER_STOP_GRACE_S) is None:
                worker.kill()
        for part in self.parts:
            part.kill()
            part.join()


def run_dev_stack(settings: Settings, door_settings: DoorSettings, options: StackOptions) -> int:
    return DevStack(settings, door_settings, options).run()
