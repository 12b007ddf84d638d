"""Pipeline behaviours on the real media path: a livekit-server, the real worker process, a WebRTC caller.

- DTMF from a web page: the caller publishes keypad digits with `publish_dtmf` (what the call page's
  `publishDtmf` sends); the worker collects them into one user turn that the LLM gets and answers.
- Background audio: the agent publishes the ambience as its own track; the caller receives it under the
  agent's voice at the configured level, and it stops when the call ends (here the agent ends it at
  `max_call_duration_ms`).

The module's catalog is the example catalog (support takes DTMF, as shipped) with the sales agent given a city
ambience and a short maximum call duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import yaml
from livekit import rtc

from tests.e2e.caller import SPEECH_RMS, Caller
from tests.e2e.catalog import write_catalog
from tests.e2e.conftest import SALES_AGENT, SUPPORT_AGENT
from tests.e2e.livekit_server import LiveKitServer
from tests.e2e.providers import ProviderDoubles
from tests.e2e.session_records import wait_for_record
from tests.e2e.worker_process import WorkerEnv, WorkerProcess

CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
SALES_MAX_CALL_MS = 9000
AMBIENCE_TRACK = "background_audio"


@pytest.fixture(scope="module")
def world(livekit: LiveKitServer, doubles: ProviderDoubles, tmp_path_factory: pytest.TempPathFactory) -> WorkerEnv:
    base = tmp_path_factory.mktemp("e2e-features")
    catalog = write_catalog(base / "catalog", doubles)
    sales = catalog / "sales.yaml"
    document = yaml.safe_load(sales.read_text())
    document["revisions"][0]["pipeline"].update(
        background_audio_enabled=True,
        background_audio_preset="city",
        background_audio_volume=0.5,
        max_call_duration_ms=SALES_MAX_CALL_MS,
    )
    sales.write_text(yaml.safe_dump(document, sort_keys=False))
    return WorkerEnv(
        livekit=livekit,
        catalog=catalog,
        database_url=f"sqlite:///{base / 'records.db'}",
        webhook_url=doubles.webhook.url,
        webhook_secret=doubles.webhook.secret,
    )


@pytest.fixture(scope="module")
def worker(world: WorkerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = WorkerProcess.started(world, tmp_path_factory.mktemp("worker") / "worker.log")
    yield process
    process.stop()


async def test_keypad_digits_from_the_web_page_reach_the_llm_as_one_turn(
    worker: WorkerProcess, world: WorkerEnv, doubles: ProviderDoubles
) -> None:
    minted = world.web_call("--agent-id", SUPPORT_AGENT, "--session-type", "test")
    caller = Caller(minted["livekit_url"], minted["access_token"])
    await caller.connect()
    try:
        await caller.wait_agent(timeout=10)
        assert caller.connected_at is not None
        greeting = await caller.wait_speech(since=caller.connected_at, timeout=15)
        await caller.wait_quiet(since=greeting.at)
        pressed_at = time.monotonic()
        for digit in "4711#":
            await caller.room.local_participant.publish_dtmf(code=CODES[digit], digit=digit)
            await asyncio.sleep(0.15)

        def keyed() -> list[str]:
            return doubles.call(
                lambda: [r.last_user_text for r in doubles.openai.chat_requests if "Keypad" in r.last_user_text]
            )

        await caller.wait_for(lambda: bool(keyed()), timeout=10, what="the keyed turn at the LLM")
        assert set(keyed()) == {"Keypad input: 4711"}
        answer = await caller.wait_speech(since=pressed_at, timeout=15)
        assert answer.rms > SPEECH_RMS
        await caller.wait_quiet(since=answer.at)
    finally:
        await caller.hang_up()

    record = await wait_for_record(world.database_url, minted["session_id"])
    assert ("user", "Keypad input: 4711") in [(item.role, item.text) for item in record.transcript]


@dataclass
class TrackLevels:
    """Every audio frame the caller receives from the agent, by track name: (monotonic time, RMS)."""

    frames: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    unpublished_at: dict[str, float] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def attach(self, room: rtc.Room) -> None:
        room.on("track_subscribed", self._on_track)
        room.on("track_unpublished", self._on_unpublished)

    def _on_track(self, track: rtc.Track, publication: rtc.RemoteTrackPublication, _p: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self.tasks.append(asyncio.create_task(self._listen(track, publication.name)))

    def _on_unpublished(self, publication: rtc.RemoteTrackPublication, _p: rtc.RemoteParticipant) -> None:
        self.unpublished_at.setdefault(publication.name, time.monotonic())

    async def _listen(self, track: rtc.Track, name: str) -> None:
        frames = self.frames.setdefault(name, [])
        stream = rtc.AudioStream(track, sample_rate=48_000, num_channels=1)
        try:
            async for event in stream:
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                frames.append((time.monotonic(), float(np.sqrt(np.mean(pcm**2))) if pcm.size else 0.0))
        finally:
            await stream.aclose()

    def rms(self, name: str, start: float, end: float) -> float:
        window = [r for t, r in self.frames.get(name, []) if start <= t < end]
        return float(np.sqrt(np.mean(np.square(window)))) if window else 0.0

    def loudest(self, name: str, start: float, end: float) -> float:
        return max((r for t, r in self.frames.get(name, []) if start <= t < end), default=0.0)

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_the_ambience_plays_under_the_agent_and_stops_when_the_call_ends(
    worker: WorkerProcess, world: WorkerEnv
) -> None:
    minted = world.web_call("--agent-id", SALES_AGENT, "--session-type", "test")
    caller = Caller(minted["livekit_url"], minted["access_token"])
    levels = TrackLevels()
    levels.attach(caller.room)
    await caller.connect()
    try:
        await caller.wait_agent(timeout=10)
        assert caller.connected_at is not None
        # the caller's own "agent speech" measure hears both tracks; here each track is measured on its own
        await caller.wait_for(lambda: len(levels.frames) == 2, timeout=10, what="the voice and the ambience tracks")
        assert AMBIENCE_TRACK in levels.frames, list(levels.frames)
        voice = next(name for name in levels.frames if name != AMBIENCE_TRACK)

        def greeted() -> bool:
            loud = [t for t, r in levels.frames[voice] if r > SPEECH_RMS]
            return (
                bool(loud)
                and levels.loudest(voice, loud[-1] + 0.01, time.monotonic()) < SPEECH_RMS
                and (time.monotonic() - loud[-1] > 0.8)
            )

        await caller.wait_for(greeted, timeout=20, what="the greeting")
        speaking = [t for t, r in levels.frames[voice] if r > SPEECH_RMS]
        # under the greeting: both tracks at once, the ambience at its level (the city clip at 0.5, after Opus)
        assert levels.rms(voice, speaking[0], speaking[-1]) > SPEECH_RMS
        under = levels.rms(AMBIENCE_TRACK, speaking[0], speaking[-1])
        assert 100 < under < 600, under

        # the agent ends the call at max_call_duration_ms; the ambience ends with it
        await caller.wait_for(
            lambda: AMBIENCE_TRACK in levels.unpublished_at, timeout=SALES_MAX_CALL_MS / 1000 + 10, what="the end"
        )
        ended_at = levels.unpublished_at[AMBIENCE_TRACK]
        assert ended_at - caller.connected_at < SALES_MAX_CALL_MS / 1000 + 5
        with contextlib.suppress(AssertionError):
            await caller.wait_for(lambda: False, timeout=1.5, what="a second and a half")
        assert levels.loudest(AMBIENCE_TRACK, ended_at + 0.5, time.monotonic()) < 1.0
    finally:
        await levels.aclose()
        await caller.hang_up()

    record = await wait_for_record(world.database_url, minted["session_id"])
    assert record.end_reason is not None and record.end_reason.value == "max_call_duration"
