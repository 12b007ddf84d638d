"""The test servers' ports come from below the ephemeral range, so no outgoing connection can take one first."""

from __future__ import annotations

import socket

from tests import ports


def test_ports_are_below_the_ephemeral_range_free_and_never_handed_out_twice() -> None:
    handed = [ports.free_port() for _ in range(50)]
    assert len(set(handed)) == len(handed)
    assert all(ports._LOWEST <= port < ports._ephemeral_start() for port in handed)
    for port in handed[:5]:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("0.0.0.0", port))
            udp.bind(("0.0.0.0", port))


def test_a_taken_port_is_skipped() -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        # park the walk just before a port someone holds: the next one handed out must not be it
        taken = ports.free_port() + 1
        holder.close()
    with socket.socket() as held:
        held.bind(("0.0.0.0", taken))
        assert ports.free_port() != taken
