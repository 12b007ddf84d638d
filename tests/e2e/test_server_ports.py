"""livekit-server comes up even when a port handed to it is taken before it binds (the race a CI run lost to)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests import ports
from tests.e2e import livekit_server


def test_a_port_taken_before_the_server_binds_means_fresh_ports(
    test_network: None, livekit_binary: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as thief:
        thief.bind(("0.0.0.0", ports.free_port()))
        thief.listen()
        taken = thief.getsockname()[1]
        handed: list[int] = []

        def first_the_taken_one() -> Iterator[int]:
            yield taken
            while True:
                yield ports.free_port()

        sequence = first_the_taken_one()

        def next_port() -> int:
            handed.append(next(sequence))
            return handed[-1]

        monkeypatch.setattr(livekit_server, "free_port", next_port)
        with livekit_server.running_livekit_server() as server:
            assert httpx.get(server.http_url, timeout=2).status_code == 200
            assert str(taken) not in server.url
        assert handed[0] == taken
        assert len(handed) == 6, "one launch lost its port, the second got three fresh ones"
