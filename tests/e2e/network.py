"""The test hosts the real-server suite runs on: a private network namespace with a veth pair.

WebRTC must never target this machine's own interface addresses, and loopback alone does not carry it:
livekit-server drops loopback ICE candidates (unless `rtc.enable_loopback_candidate`) and libwebrtc (the
`livekit` Python SDK, Chromium) does not gather on loopback interfaces. So the pytest process moves itself into
a new network namespace before any thread exists (`enter_test_network()`, called from tests/conftest.py's
`pytest_configure`) and adds a veth pair there with two addresses of its own. Every process the suite starts
(livekit-server, the worker, the door, callers, Chromium) inherits the namespace: the only interfaces any of
them can see are this namespace's loopback and the two veth ends, so no packet can leave it.

`unshare(CLONE_NEWNET)` needs CAP_SYS_ADMIN (root, as on CI). Elsewhere the namespace is not made and
`NETWORK.problem` says why; the real-server fixtures then skip locally and fail on CI (docs/real-livekit.md).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass

# The server's node IP (advertised in its ICE candidates) and the second test host. Both ends of the pair live
# in the one namespace, so traffic between them is routed locally, but both are non-loopback interfaces that
# ICE gathers on.
SERVER_HOST = "10.77.0.1"
PEER_HOST = "10.77.0.2"
_PREFIX = 24
_CLONE_NEWNET = 0x40000000


@dataclass
class TestNetwork:
    entered: bool = False
    problem: str | None = "enter_test_network() was not called"


NETWORK = TestNetwork()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def enter_test_network() -> TestNetwork:
    """Move this process into a fresh network namespace with lo and a veth pair up. Idempotent."""
    if NETWORK.entered:
        return NETWORK
    if os.environ.get("VOICE_WORKER_TEST_NETNS") == "0":
        NETWORK.problem = "VOICE_WORKER_TEST_NETNS=0"
        return NETWORK
    if shutil.which("ip") is None:
        NETWORK.problem = "the `ip` command (Debian package iproute2) is not installed"
        return NETWORK
    if os.geteuid() != 0:
        NETWORK.problem = "making a network namespace needs root (CAP_SYS_ADMIN); run the suite as root, as CI does"
        return NETWORK
    # unshare moves only the calling thread; threads started before it would stay outside
    if threading.active_count() != 1:
        NETWORK.problem = f"{threading.active_count()} threads already run; the namespace must be made before any"
        return NETWORK
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        NETWORK.problem = f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
        return NETWORK
    try:
        _ip("link", "set", "lo", "up")
        _ip("link", "add", "vwt0", "type", "veth", "peer", "name", "vwt1")
        _ip("addr", "add", f"{SERVER_HOST}/{_PREFIX}", "dev", "vwt0")
        _ip("addr", "add", f"{PEER_HOST}/{_PREFIX}", "dev", "vwt1")
        _ip("link", "set", "vwt0", "up")
        _ip("link", "set", "vwt1", "up")
    except subprocess.CalledProcessError as exc:
        NETWORK.problem = f"setting up the test hosts failed: {' '.join(exc.cmd)}: {exc.stderr.strip()}"
        return NETWORK
    NETWORK.entered, NETWORK.problem = True, None
    return NETWORK
