"""The worker's life around calls on a real server: SIGTERM drains (no new job, the active call runs to its end,
the process exits 0) while another worker takes the next call; SIGKILL mid-call ends that call (self-hosted
LiveKit does not re-dispatch a job whose worker died) and a restarted worker serves new calls.
What LiveKit and the caller see in each case is written down in docs/real-livekit.md."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from tests.e2e.caller import Caller
from tests.e2e.conftest import SUPPORT_AGENT
from tests.e2e.conversation import converse
from tests.e2e.providers import ProviderDoubles
from tests.e2e.session_records import wait_for_record
from tests.e2e.test_refusals import _agents_in
from tests.e2e.worker_process import WorkerEnv, WorkerProcess

QUESTION = "I would like a refund for my order please"
# LiveKit's reconnect window for a participant whose connection dropped is about 20 s (measured here: 20.5 s).
SERVER_DEPARTURE_S = 40.0


def _accepted_rooms(worker: WorkerProcess) -> list[str]:
    return [
        str(r["message"]) for r in worker.log_records() if str(r.get("message", "")).startswith("dispatch accepted")
    ]


async def test_sigterm_drains_while_another_worker_takes_new_calls(
    world: WorkerEnv, doubles: ProviderDoubles, speak: Callable[[str], np.ndarray], tmp_path: Path
) -> None:
    # Both workers are up before the call: the example agent ends a call after 15 s of silence, longer than a
    # worker takes to start here, so the held call must not wait for the second one.
    workers = [WorkerProcess.started(world, tmp_path / "a.log"), WorkerProcess.started(world, tmp_path / "b.log")]
    try:
        held = world.web_call("--agent-id", SUPPORT_AGENT)
        caller = Caller(held["livekit_url"], held["access_token"])
        await caller.connect()
        await converse(caller, doubles, [])  # joined and greeted: the call is in progress
        holders = [w for w in workers if any(held["room_name"] in line for line in _accepted_rooms(w))]
        assert len(holders) == 1
        draining, other_worker = holders[0], next(w for w in workers if w is not holders[0])

        draining.signal(signal.SIGTERM)
        await asyncio.sleep(1.0)  # the drain reaches LiveKit at once (WS_FULL), before the next call
        assert draining.process.poll() is None, "a draining worker with an active call must not exit yet"

        # the next call goes to the other worker
        new = world.web_call("--agent-id", SUPPORT_AGENT)
        other = Caller(new["livekit_url"], new["access_token"])
        await other.connect()
        try:
            assert await other.wait_agent(timeout=5) < 5
        finally:
            await other.hang_up()
        assert any(new["room_name"] in line for line in _accepted_rooms(other_worker))
        assert not any(new["room_name"] in line for line in _accepted_rooms(draining))

        # the held call still works on the draining worker: the caller asks and is answered
        doubles.call(lambda: doubles.deepgram.script_transcripts(QUESTION))
        said_at = await caller.say(speak(QUESTION))
        await caller.wait_speech(since=said_at, timeout=10)
        await caller.wait_quiet(since=said_at)
        await caller.hang_up()

        assert draining.wait(timeout=60) == 0
        record = await wait_for_record(world.database_url, held["session_id"])
        assert record.end_reason is not None and record.end_reason.value == "participant_left"
        assert any(item.role == "user" and item.text == QUESTION for item in record.transcript)
    finally:
        for worker in workers:
            worker.stop()


async def test_sigkill_mid_call_ends_the_call_and_a_restart_serves_new_calls(
    world: WorkerEnv, doubles: ProviderDoubles, tmp_path: Path
) -> None:
    worker = WorkerProcess.started(world, tmp_path / "killed.log")
    children = psutil.Process(worker.process.pid).children(recursive=True)
    held = world.web_call("--agent-id", SUPPORT_AGENT)
    caller = Caller(held["livekit_url"], held["access_token"])
    await caller.connect()
    try:
        await converse(caller, doubles, [])
        assert await _agents_in(world, held["room_name"])
        killed_at = time.monotonic()
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.wait(10)

        # The job process notices its parent is gone and exits; its WebRTC connection drops without a leave.
        deadline = time.monotonic() + 10
        while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
            assert time.monotonic() < deadline, "job processes outlived their killed worker by 10 s"
            await asyncio.sleep(0.1)
        children_gone_s = time.monotonic() - killed_at
        # LiveKit keeps a participant whose connection dropped for its reconnect window, then removes it: the
        # caller sees the agent leave. SERVER_DEPARTURE_S bounds that window with room to spare on a busy machine.
        deadline = killed_at + SERVER_DEPARTURE_S
        while await _agents_in(world, held["room_name"]):
            assert time.monotonic() < deadline, (
                f"the killed worker's agent is still in the room after {SERVER_DEPARTURE_S} s"
            )
            await asyncio.sleep(0.25)
        agent_gone_s = time.monotonic() - killed_at
        # No re-dispatch on a self-hosted server: the room stays without an agent.
        await asyncio.sleep(5)
        assert await _agents_in(world, held["room_name"]) == []
        assert caller.agent_joined_at is not None
        assert caller.room.isconnected()  # the caller is still in the room, alone
        # nobody was left to finish the record: it stays started, without an end (docs/real-livekit.md)
        record = await wait_for_record(world.database_url, held["session_id"], ended=False)
        assert record.started_at is not None and record.end_reason is None
        print(
            f"SIGKILL: job processes gone after {children_gone_s:.1f} s, agent removed by LiveKit after "
            f"{agent_gone_s:.1f} s, no re-dispatch"
        )
    finally:
        await caller.hang_up()
        worker.stop()

    restarted = WorkerProcess.started(world, tmp_path / "restarted.log")
    try:
        minted = world.web_call("--agent-id", SUPPORT_AGENT)
        fresh = Caller(minted["livekit_url"], minted["access_token"])
        await fresh.connect()
        try:
            assert await fresh.wait_agent(timeout=5) < 5
        finally:
            await fresh.hang_up()
    finally:
        restarted.stop()
