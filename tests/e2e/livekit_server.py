"""A real livekit-server (the pinned build from scripts/install-livekit-server), one per test module.

Configured the way the tests need it and nothing more: explicit keys (never the public dev pair), free ports,
signalling on loopback and the server test host, ICE only on the test network (tests/e2e/network.py) with the
server's node IP advertised, `logging.level: warn` so its log says something only when something is wrong.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tests.e2e.network import SERVER_HOST
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "scripts" / "versions.env"
BINARY = ROOT / ".tools" / "bin" / "livekit-server"
READY_TIMEOUT_S = 20.0


def pinned_version() -> str:
    """LIVEKIT_SERVER_VERSION from scripts/versions.env, without the leading v."""
    for line in VERSIONS.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "LIVEKIT_SERVER_VERSION":
            return value.strip().removeprefix("v")
    raise RuntimeError(f"{VERSIONS.name} does not pin LIVEKIT_SERVER_VERSION")


def installed_version(binary: Path = BINARY) -> str | None:
    if not binary.exists():
        return None
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.split()[-1] if out.split() else None


@dataclass
class LiveKitServer:
    url: str
    http_url: str
    api_key: str
    api_secret: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


@contextmanager
def running_livekit_server(binary: Path = BINARY) -> Iterator[LiveKitServer]:
    server = _started(binary)
    try:
        yield server
    finally:
        _stop(server)


BIND_ATTEMPTS = 3


def _started(binary: Path) -> LiveKitServer:
    """A ready server; a port lost to another socket between its check and the server's bind means fresh ports."""
    for attempt in range(1, BIND_ATTEMPTS + 1):
        server = _launch(binary)
        try:
            _wait_ready(server)
        except _PortTaken:
            _stop(server)
            if attempt == BIND_ATTEMPTS:
                raise RuntimeError(
                    f"livekit-server found its ports taken {BIND_ATTEMPTS} times:\n{server.log_text()[-3000:]}"
                ) from None
            continue
        except BaseException:
            _stop(server)
            raise
        return server
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class _PortTaken(Exception):
    pass


def _launch(binary: Path) -> LiveKitServer:
    port, tcp_port, udp_port = free_port(), free_port(), free_port()
    api_key, api_secret = "e2e-" + secrets.token_hex(4), secrets.token_urlsafe(32)
    config = {
        "port": port,
        "bind_addresses": ["127.0.0.1", SERVER_HOST],
        "keys": {api_key: api_secret},
        "logging": {"level": "warn"},
        "rtc": {
            "tcp_port": tcp_port,
            "udp_port": udp_port,
            "use_external_ip": False,
            "node_ip": SERVER_HOST,
        },
    }
    # the keys come from the config only: an operator's LIVEKIT_* variables would override it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "NODE_IP", "UDP_PORT", "REDIS_"))}
    # delete=False: the log outlives the server for the failure report
    with tempfile.NamedTemporaryFile(prefix="livekit-server-e2e-", suffix=".log", delete=False) as log_file:
        process = subprocess.Popen(
            [str(binary), "--config-body", yaml.safe_dump(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return LiveKitServer(
        url=f"ws://127.0.0.1:{port}",
        http_url=f"http://127.0.0.1:{port}",
        api_key=api_key,
        api_secret=api_secret,
        process=process,
        log_path=Path(log_file.name),
    )


def _wait_ready(server: LiveKitServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            log = server.log_text()
            if "address already in use" in log:
                raise _PortTaken
            raise RuntimeError(f"livekit-server exited with {server.process.returncode}:\n{log[-3000:]}")
        try:
            if httpx.get(server.http_url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"livekit-server not ready in {READY_TIMEOUT_S} s:\n{server.log_text()[-3000:]}")
        time.sleep(0.1)


def _stop(server: LiveKitServer) -> None:
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
