"""A real `voice-worker door` process for tests: production settings from door_world, a free port, its output
captured to a file, and helpers to measure it (RSS, threads) and to stop it with a signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.doubles.door_world import (
    AGENT_NAME,
    ISSUER,
    LIVEKIT_KEY,
    LIVEKIT_SECRET,
    PUBLIC_URL,
    SIGNING_SECRET,
    write_catalog,
    write_keys_file,
)
from tests.ports import free_port

VOICE_WORKER = Path(sys.executable).with_name("voice-worker")


def door_env(tmp_path: Path, **overrides: object) -> dict[str, str]:
    """The environment of a production door on 127.0.0.1 (no `.env` is read: the process runs in `tmp_path`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOOR_", "LIVEKIT_", "DISPATCH_", "DATABASE_"))}
    catalog = tmp_path / "catalog"
    if not catalog.exists():
        write_catalog(catalog)
    keys = tmp_path / "door-keys.yaml"
    if not keys.exists():
        write_keys_file(keys)
    env.update(
        {
            "VOICE_WORKER_MODE": "production",
            "AGENT_NAME": AGENT_NAME,
            "LIVEKIT_URL": "ws://livekit.internal:7880",
            "LIVEKIT_API_KEY": LIVEKIT_KEY,
            "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
            "DISPATCH_SIGNING_SECRET": SIGNING_SECRET,
            "DISPATCH_ISSUER": ISSUER,
            "CATALOG_PATH": str(catalog),
            "DOOR_API_KEYS_FILE": str(keys),
            "DOOR_PUBLIC_LIVEKIT_URL": PUBLIC_URL,
            "DOOR_RATE_LIMIT_PER_MINUTE": "10000",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'door.db'}",
            "DOOR_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@dataclass
class DoorProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _closed: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def threads(self) -> int:
        return int(psutil.Process(self.process.pid).num_threads())

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL and an AssertionError if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the door did not stop after SIGTERM") from None


def start_door(tmp_path: Path, name: str = "door", **overrides: object) -> DoorProcess:
    """Start `voice-worker door` and wait until /healthz answers (generous bound: only to fail, not hang)."""
    port = int(overrides.pop("DOOR_PORT", 0)) or free_port()
    env = door_env(tmp_path, DOOR_PORT=port, **overrides)
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(VOICE_WORKER), "door"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    door = DoorProcess(process, port, log_path)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the door exited with {process.returncode}: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{door.url}/healthz", timeout=1).status_code == 200:
                return door
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            door.process.kill()
            raise AssertionError(f"the door never answered: {log_path.read_text()[-3000:]}")
        time.sleep(0.1)
