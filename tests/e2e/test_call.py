"""A whole call on the real path: token → LiveKit creates the room and dispatches the worker → the caller hears
the greeting, asks, hears the answer, hangs up → the session record has the call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest
from livekit import api

from tests.e2e.caller import Caller
from tests.e2e.conftest import SUPPORT_AGENT
from tests.e2e.providers import ProviderDoubles
from tests.e2e.worker_process import WorkerEnv, WorkerProcess

QUESTION = "I would like a refund for my order please"


async def test_registered_under_agent_name(worker: WorkerProcess, world: WorkerEnv) -> None:
    # /ready is 200 only once LiveKit answered the worker's registration; the log names the agent name
    assert worker.ready()
    assert any(world.agent_name in str(r.get("message", "")) or r.get("agent_name") == world.agent_name
               for r in worker.log_records()) or world.agent_name in worker.log_text()


async def test_call_from_web_call_token(
    worker: WorkerProcess, world: WorkerEnv, doubles: ProviderDoubles, speak: Callable[[str], np.ndarray]
) -> None:
    minted = world.web_call("--agent-id", SUPPORT_AGENT, "--var", "customer_name=Dana", "--session-type", "test")
    caller = Caller(minted["livekit_url"], minted["access_token"])
    doubles.call(lambda: doubles.deepgram.script_transcripts(QUESTION))
    await caller.connect()
    try:
        joined_s = await caller.wait_agent(timeout=5)
        greeting = await caller.wait_speech(since=caller.connected_at or 0, timeout=10)
        await caller.wait_quiet(since=greeting.at)
        said_at = await caller.say(speak(QUESTION))
        answer = await caller.wait_speech(since=said_at, timeout=10)
        await caller.wait_quiet(since=answer.at)
    finally:
        await caller.hang_up()
    print(f"agent joined {joined_s:.2f} s; greeting RMS {greeting.rms:.0f}; voice-to-voice {answer.at - said_at:.3f} s")
    assert joined_s < 5
