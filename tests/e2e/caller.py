"""A real WebRTC caller: the `livekit` Python SDK joins the room with a browser's token, publishes a
microphone track and listens to the agent.

The microphone runs like a real one: a 10 ms frame every 10 ms, silence unless the test makes it speak, so the
worker's VAD and the STT see the ends of utterances as they would from a browser. Every frame the caller hears
from the agent is kept as (monotonic time, RMS), which is what "the caller heard the agent" is measured on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc

from simulations.voice_caller import pace_microphone

SAMPLE_RATE = 48_000
FRAME_MS = 10
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000
# int16 RMS above which a received frame counts as agent speech. The doubles' TTS renders tones around
# RMS 3000-6000 after Opus; decoded silence is below 50.
SPEECH_RMS = 300.0


@dataclass
class Heard:
    at: float
    rms: float


@dataclass
class Caller:
    url: str
    token: str
    room: rtc.Room = field(default_factory=rtc.Room)
    heard: list[Heard] = field(default_factory=list)
    # monotonic time at which each `say()` finished publishing its last speech sample
    speech_ends: list[float] = field(default_factory=list)
    agent_joined_at: float | None = None
    connected_at: float | None = None
    _pending: list[np.ndarray] = field(default_factory=list)
    _source: rtc.AudioSource | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _spoken: asyncio.Event = field(default_factory=asyncio.Event)
    _heard_changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, timeout: float = 10.0) -> None:
        self.room.on("participant_connected", self._on_participant)
        self.room.on("track_subscribed", self._on_track)
        await asyncio.wait_for(self.room.connect(self.url, self.token), timeout)
        self.connected_at = time.monotonic()
        for participant in self.room.remote_participants.values():
            self._on_participant(participant)
        # a short queue keeps "published" close to "sent": end-of-speech times are taken when a frame is queued
        self._source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=50)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._tasks.append(asyncio.create_task(self._microphone(), name="caller-microphone"))

    def _on_participant(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and self.agent_joined_at is None:
            self.agent_joined_at = time.monotonic()

    def _on_track(
        self, track: rtc.Track, _publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            self._tasks.append(asyncio.create_task(self._listen(track), name="caller-listen"))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                rms = float(np.sqrt(np.mean(pcm**2))) if pcm.size else 0.0
                self.heard.append(Heard(time.monotonic(), rms))
                self._heard_changed.set()
        finally:
            await stream.aclose()

    async def _microphone(self) -> None:
        assert self._source is not None
        await pace_microphone(self._source, self._pending, self._spoke)

    def _spoke(self, at: float) -> None:
        self.speech_ends.append(at)
        self._spoken.set()

    async def say(self, pcm: np.ndarray, timeout: float = 30.0) -> float:
        """Speak 48 kHz mono int16 `pcm` into the microphone; returns the monotonic time its last sample was
        published (the end of the caller's speech)."""
        self._spoken.clear()
        self._pending.append(pcm.astype(np.int16))
        await asyncio.wait_for(self._spoken.wait(), timeout)
        return self.speech_ends[-1]

    def heard_speech_after(self, since: float) -> Heard | None:
        return next((h for h in self.heard if h.at >= since and h.rms >= SPEECH_RMS), None)

    def silent_after(self, since: float, window_s: float) -> bool:
        """Whether the agent has been quiet for `window_s` seconds after `since` (its turn is over)."""
        recent = [h for h in self.heard if h.at >= since]
        if not recent or recent[-1].at - since < window_s:
            return False
        tail = [h for h in recent if h.at >= recent[-1].at - window_s]
        return all(h.rms < SPEECH_RMS for h in tail)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self._heard_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard_changed.wait(), min(remaining, 0.1))

    async def wait_agent(self, timeout: float = 5.0) -> float:
        """Seconds from connect until an agent participant was in the room."""
        await self.wait_for(lambda: self.agent_joined_at is not None, timeout, "the agent to join")
        assert self.agent_joined_at is not None and self.connected_at is not None
        return max(0.0, self.agent_joined_at - self.connected_at)

    async def wait_speech(self, since: float, timeout: float = 10.0) -> Heard:
        await self.wait_for(lambda: self.heard_speech_after(since) is not None, timeout, "agent speech")
        heard = self.heard_speech_after(since)
        assert heard is not None
        return heard

    async def wait_quiet(self, since: float, window_s: float = 0.8, timeout: float = 20.0) -> None:
        await self.wait_for(lambda: self.silent_after(since, window_s), timeout, "the agent to finish speaking")

    async def hang_up(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.room.disconnect()
