"""Shared pytest set-up. Fixture modules live beside the tests that use them; keep this file small."""

import os

import pytest

from tests.e2e.network import enter_test_network

# Tests never talk to real providers or a real LiveKit unless a test opts in explicitly.
os.environ.setdefault("VOICE_WORKER_MODE", "dev")


def pytest_configure(config: pytest.Config) -> None:
    # Before any test (or plugin) starts a thread: the whole run, and every process it starts, lives in a
    # network namespace of its own (tests/e2e/network.py), so the real-server suite's WebRTC traffic stays there.
    enter_test_network()
    config.addinivalue_line("markers", "e2e: real livekit-server, real worker process, real WebRTC callers")
