"""Ports for the servers the tests start, taken from below the kernel's ephemeral range.

Asking the kernel for port 0, closing the socket and handing the number to a server races with every outgoing
connection the suite makes: their local ports come from the same ephemeral range (32768-60999 here,
/proc/sys/net/ipv4/ip_local_port_range), and a CI run once lost four real-server tests when livekit-server's
`bind` found its port taken by a client socket between the check and the bind. Ports below that range are
never handed out to clients, so a port checked free here stays free unless another test server takes it, and
each process walks its own stretch of the range (offset by its pid) so two suites on one machine rarely meet.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000
_DEFAULT_EPHEMERAL_START = 32768


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_START


_END = max(_LOWEST + 1000, _ephemeral_start())
_SPAN = _END - _LOWEST
_next = itertools.count((os.getpid() * 97) % _SPAN)


def _bindable(port: int) -> bool:
    """Free for TCP and UDP on every address: livekit-server listens on the wildcard for ICE over TCP and UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port no socket holds now and no outgoing connection will be given."""
    for _ in range(_SPAN):
        port = _LOWEST + next(_next) % _SPAN
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port between {_LOWEST} and {_END}")
