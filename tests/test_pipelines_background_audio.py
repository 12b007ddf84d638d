"""Background audio through livekit's BackgroundAudioPlayer beside a real roomless AgentSession: the ambience track
the player publishes is read back with `rtc.AudioStream` (the audio a caller's side would mix under the agent's
voice) and measured: the preset's clip at the configured volume, under the agent's speech, once or looped, and
silent and unpublished once the session closes (the caller hung up)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.utils.audio import audio_frames_from_file

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.background_audio import PRESET_CLIPS, BackgroundAudio
from tests.doubles.audio_io import CapturingAudioOutput
from tests.doubles.fake_speech import FakeTTS

WAIT_S = 10.0
_sids = itertools.count()


@dataclass
class Publication:
    track: rtc.LocalAudioTrack
    sid: str = field(default_factory=lambda: f"TR_test{next(_sids)}")

    @property
    def name(self) -> str:
        return self.track.name


@dataclass
class LocalParticipant:
    """What BackgroundAudioPlayer uses of the room's local participant: publish, find and unpublish its track."""

    track_publications: dict[str, Publication] = field(default_factory=dict)
    published: list[Publication] = field(default_factory=list)
    unpublished_at: dict[str, float] = field(default_factory=dict)

    async def publish_track(self, track: rtc.LocalAudioTrack, options: Any = None) -> Publication:
        publication = Publication(track)
        self.track_publications[publication.sid] = publication
        self.published.append(publication)
        return publication

    async def unpublish_track(self, sid: str) -> None:
        self.track_publications.pop(sid)
        self.unpublished_at[sid] = time.time()


@dataclass
class Room:
    local_participant: LocalParticipant = field(default_factory=LocalParticipant)


class TrackListener:
    """Every frame of a local track as the room would send it: (time, RMS)."""

    def __init__(self, track: rtc.LocalAudioTrack) -> None:
        self.frames: list[tuple[float, float]] = []
        self._stream = rtc.AudioStream(track, sample_rate=48_000, num_channels=1)
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        async for event in self._stream:
            pcm = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            self.frames.append((time.time(), float(np.sqrt(np.mean(pcm**2))) if pcm.size else 0.0))

    def rms(self, start: float, end: float) -> float:
        window = [r for t, r in self.frames if start <= t < end]
        return float(np.sqrt(np.mean(np.square(window)))) if window else 0.0

    def loudest(self, start: float, end: float) -> float:
        return max((r for t, r in self.frames if start <= t < end), default=0.0)

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._stream.aclose()


async def clip_rms(preset: str, seconds: float) -> float:
    """The clip's own level over its first `seconds` (what volume 1.0 would play)."""
    samples: list[np.ndarray] = []
    total = 0.0
    async for frame in audio_frames_from_file(PRESET_CLIPS[preset].path()):  # type: ignore[index]  # a preset name
        samples.append(np.frombuffer(frame.data, dtype=np.int16).astype(np.float64))
        total += frame.duration
        if total >= seconds:
            break
    return float(np.sqrt(np.mean(np.square(np.concatenate(samples)))))


@dataclass
class Call:
    session: AgentSession[None]
    speaker: CapturingAudioOutput
    room: Room
    ambience: BackgroundAudio
    listener: TrackListener
    started_at: float


@pytest.fixture
async def call() -> AsyncIterator[Any]:
    calls: list[Call] = []

    async def start(**fields: Any) -> Call:
        config = VoicePipelineConfig.model_validate({"background_audio_enabled": True, **fields})
        session: AgentSession[None] = AgentSession(tts=FakeTTS(ttfb_s=0.05, seconds_per_char=0.05))
        speaker = CapturingAudioOutput()
        session.output.audio = speaker
        await session.start(Agent(instructions="Be brief."))
        room = Room()
        ambience = await BackgroundAudio.start(session, config, room)  # type: ignore[arg-type]  # the room double
        assert ambience is not None
        [publication] = room.local_participant.published
        c = Call(session, speaker, room, ambience, TrackListener(publication.track), time.time())
        calls.append(c)
        return c

    yield start
    for c in calls:
        await c.session.aclose()
        await c.ambience.aclose()
        await c.listener.aclose()
        await c.speaker.aclose()


async def test_the_preset_plays_at_the_configured_volume(call: Any) -> None:
    quiet = await call(background_audio_preset="city", background_audio_volume=0.2)
    loud = await call(background_audio_preset="city", background_audio_volume=0.8)
    await asyncio.sleep(3.0)
    reference = await clip_rms("city", 3.0)
    for c, volume in ((quiet, 0.2), (loud, 0.8)):
        level = c.listener.rms(c.started_at + 0.5, c.started_at + 3.0)
        assert level == pytest.approx(reference * volume, rel=0.3), (volume, level, reference)
    ratio = loud.listener.rms(loud.started_at + 0.5, loud.started_at + 3.0) / quiet.listener.rms(
        quiet.started_at + 0.5, quiet.started_at + 3.0
    )
    assert ratio == pytest.approx(4.0, rel=0.15)


async def test_the_ambience_runs_under_the_agent_speech(call: Any) -> None:
    c = await call(background_audio_preset="cafe", background_audio_volume=0.5)
    c.session.say("Thanks for calling, let me look that up for you right now.")
    segment = await c.speaker.wait_for_playout_of(0, timeout=WAIT_S)
    assert segment.finished_at is not None and segment.pushed_duration > 1.0
    voice = segment.pcm.astype(np.float64)
    assert np.sqrt(np.mean(voice**2)) > 1000  # the agent spoke
    under = c.listener.rms(segment.first_frame_at, segment.finished_at)
    assert under == pytest.approx(await clip_rms("cafe", 3.0) * 0.5, rel=0.35), under


async def test_played_once_the_clip_ends_and_looped_it_goes_on(call: Any) -> None:
    once = await call(background_audio_preset="keyboard_typing2", background_audio_loop=False)  # a 3.3 s clip
    looped = await call(background_audio_preset="keyboard_typing2", background_audio_loop=True)
    await asyncio.sleep(6.5)
    for c in (once, looped):
        assert c.listener.loudest(c.started_at, c.started_at + 3.0) > 20  # typing, at first
    assert once.listener.loudest(once.started_at + 4.5, once.started_at + 6.5) < 1.0
    assert once.ambience.handle.done()
    assert looped.listener.loudest(looped.started_at + 4.5, looped.started_at + 6.5) > 20
    assert not looped.ambience.handle.done()


async def test_the_ambience_stops_when_the_session_closes(call: Any) -> None:
    c = await call(background_audio_preset="city", background_audio_volume=0.5)
    await asyncio.sleep(1.5)
    assert c.listener.loudest(c.started_at, time.time()) > 50
    closed_at = time.time()
    await c.session.aclose()  # what a hang-up does to the session
    await c.ambience.aclose()
    await asyncio.sleep(1.5)
    [publication] = c.room.local_participant.published
    assert c.room.local_participant.unpublished_at[publication.sid] - closed_at < 1.0
    # livekit buffers 400 ms of audio in the track's source; nothing is heard after that
    assert c.listener.loudest(closed_at + 0.6, time.time()) < 1.0


async def test_nothing_plays_when_disabled_or_without_a_room() -> None:
    session: AgentSession[None] = AgentSession()
    await session.start(Agent(instructions="x"))
    try:
        room = Room()
        assert await BackgroundAudio.start(session, VoicePipelineConfig(), room) is None  # type: ignore[arg-type]
        enabled = VoicePipelineConfig(background_audio_enabled=True)
        assert await BackgroundAudio.start(session, enabled, None) is None
        assert room.local_participant.published == []
    finally:
        await session.aclose()


async def test_closing_never_raises_when_the_jobs_teardown_cancelled_the_close(call: Any) -> None:
    c = await call(background_audio_preset="office")
    await c.session.aclose()  # the session's close starts closing the player
    closing = c.ambience._closing
    assert closing is not None
    closing.cancel()  # as livekit's job teardown cancels the job's pending tasks
    await c.ambience.aclose()  # returns (the call goes on to write its record), and the ambience is silent
    closed_at = time.time()
    await asyncio.sleep(1.2)
    assert c.listener.loudest(closed_at + 0.6, time.time()) < 1.0
    # what the job process's exit does to the player's tasks left by the cancelled close
    leftovers = [t for t in asyncio.all_tasks() if "BackgroundAudioPlayer" in repr(t.get_coro())]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
