"""EVENT_LOOP: livekit's loops (asyncio.new_event_loop(), in the main process and in each call's thread) follow it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import uvloop

from worker import event_loop
from worker.settings import Settings


@pytest.fixture(autouse=True)
def _restore_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


def _loop_made_in_a_thread() -> asyncio.AbstractEventLoop:
    """As livekit's job thread makes its loop (livekit/agents/ipc/proc_client.py)."""
    made: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=lambda: made.append(asyncio.new_event_loop()))
    thread.start()
    thread.join()
    return made[0]


def test_uvloop_is_the_default_and_every_new_loop_follows_it() -> None:
    assert Settings.model_fields["event_loop"].default == "uvloop"
    event_loop.install("uvloop")
    assert event_loop.installed() == "uvloop"
    for loop in (asyncio.new_event_loop(), _loop_made_in_a_thread()):
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()


def test_asyncio_puts_asyncios_own_loop_back() -> None:
    event_loop.install("uvloop")
    event_loop.install("asyncio")
    assert event_loop.installed() == "asyncio"
    loop = _loop_made_in_a_thread()
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()


def test_a_value_that_is_not_a_loop_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="EVENT_LOOP"):
        Settings()
