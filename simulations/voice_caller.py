"""The voice mode caller: a participant in the call's room that speaks through a TTS and hears through an STT.

It joins with the simulation's own token, publishes a microphone and subscribes to the agent's voice, the way a
browser caller does. The microphone runs like a real one (a 10 ms frame every 10 ms, silence between lines), so
the agent's VAD and STT find the ends of utterances as they would from a browser. It hears only the agent
participant's microphone-source track (background audio is a track of its own), measures by level when agent
speech starts and stops, follows the agent's state (`lk.agent.state`) to know when a reply is over, transcribes
the agent with its STT, and keeps the agent's attributes as last seen (they outlive the agent leaving).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import stt, tts

# The agent participant's state attribute, part of LiveKit's client protocol (what livekit-client's agent hooks
# read); livekit-agents does not export its constant.
ATTRIBUTE_AGENT_STATE = "lk.agent.state"

SAMPLE_RATE = 48_000
FRAME_MS = 10
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000
# int16 RMS above which a heard frame is agent speech; decoded silence is far below, quiet speech above
SPEECH_RMS = 300.0
# the agent's states in which its reply is not over yet
BUSY_STATES = frozenset({"thinking", "speaking"})


class AgentGone(Exception):
    """The agent left the room (it ended the call) or the room closed."""


@dataclass(frozen=True)
class Reply:
    """One reply as the caller heard it: when its first speech arrived, and what the caller's STT made of it."""

    first_audio_at: float
    text: str


class CallerParticipant:
    def __init__(self, url: str, token: str, voice: tts.TTS[Any], ears: stt.STT[Any]) -> None:
        self._url = url
        self._token = token
        self._tts = voice
        self._stt = ears
        self.room = rtc.Room()
        self.connected_at: float | None = None
        self.agent_joined_at: float | None = None
        self.agent_left = False
        # why the caller's STT stopped, if it did
        self.stt_error: str | None = None
        # the agent participant's attributes as last seen
        self.agent_attributes: dict[str, str] = {}
        self._agent_identity: str | None = None
        self._speech_times: list[float] = []
        self._finals: list[tuple[float, str]] = []
        self._pending: list[np.ndarray] = []
        self._spoken = asyncio.Event()
        self._spoken_at = 0.0
        self._changed = asyncio.Event()
        self._source: rtc.AudioSource | None = None
        self._stt_stream: stt.RecognizeStream | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- the room -----------------------------------------------------------------------------------------

    async def connect(self, timeout: float) -> None:
        self.room.on("participant_connected", self._on_participant)
        self.room.on("participant_disconnected", self._on_participant_left)
        self.room.on("participant_attributes_changed", self._on_attributes)
        self.room.on("track_subscribed", self._on_track)
        self.room.on("disconnected", self._on_disconnected)
        self._stt_stream = self._stt.stream()
        self._tasks.append(asyncio.create_task(self._transcribe(self._stt_stream), name="caller-stt"))
        await asyncio.wait_for(self.room.connect(self._url, self._token), timeout)
        self.connected_at = time.monotonic()
        for participant in self.room.remote_participants.values():
            self._on_participant(participant)
        # a short queue keeps "published" close to "sent": the end of a line is taken when its last frame is queued
        self._source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=50)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._tasks.append(asyncio.create_task(self._microphone(), name="caller-microphone"))

    def _is_agent(self, participant: rtc.RemoteParticipant) -> bool:
        return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

    def _on_participant(self, participant: rtc.RemoteParticipant) -> None:
        if self._is_agent(participant) and self._agent_identity is None:
            self._agent_identity = participant.identity
            self.agent_joined_at = time.monotonic()
            self.agent_attributes = dict(participant.attributes)
            self._changed.set()

    def _on_participant_left(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._agent_identity:
            self.agent_left = True
            self._changed.set()

    def _on_disconnected(self, *_: object) -> None:
        self.agent_left = True
        self._changed.set()

    def _on_attributes(self, _changed: dict[str, str], participant: rtc.Participant) -> None:
        if participant.identity == self._agent_identity:
            self.agent_attributes = dict(participant.attributes)
            self._changed.set()

    def _on_track(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if (
            track.kind == rtc.TrackKind.KIND_AUDIO
            and publication.source == rtc.TrackSource.SOURCE_MICROPHONE
            and self._is_agent(participant)
        ):
            self._tasks.append(asyncio.create_task(self._listen(track), name="caller-listen"))

    # --- hearing ------------------------------------------------------------------------------------------

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                frame = event.frame
                if self._stt_stream is not None:
                    self._stt_stream.push_frame(frame)
                pcm = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
                if pcm.size and float(np.sqrt(np.mean(pcm**2))) >= SPEECH_RMS:
                    self._speech_times.append(time.monotonic())
                    self._changed.set()
        finally:
            await stream.aclose()

    async def _transcribe(self, stream: stt.RecognizeStream) -> None:
        try:
            async for event in stream:
                if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT and event.alternatives:
                    text = event.alternatives[0].text.strip()
                    if text:
                        self._finals.append((time.monotonic(), text))
                        self._changed.set()
        except Exception as exc:  # the caller went deaf: what it heard from here on is unknown, and said so
            self.stt_error = f"{type(exc).__name__}: {exc}"

    def speech_after(self, since: float) -> float | None:
        """When the first agent speech at or after `since` arrived."""
        index = bisect.bisect_left(self._speech_times, since)
        return self._speech_times[index] if index < len(self._speech_times) else None

    @property
    def agent_state(self) -> str | None:
        return self.agent_attributes.get(ATTRIBUTE_AGENT_STATE)

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Whether `predicate` came true within `timeout` (checked on every change, and at least every 50 ms)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
        return True

    async def wait_agent(self, timeout: float) -> bool:
        return await self._until(lambda: self.agent_joined_at is not None, timeout)

    async def hear_reply(self, since: float, *, timeout: float, settle_s: float, stt_wait_s: float) -> Reply | None:
        """The agent's reply to what ended at `since`: None when it did not start speaking within `timeout`.

        A reply is over when the agent is neither thinking nor speaking and has been quiet for `settle_s` (a
        filler line and the answer after a tool are one reply). Its text is every final the STT gave since
        `since`, after waiting up to `stt_wait_s` for the final of the reply's last words. Raises `AgentGone`
        when the agent leaves before it started a reply."""
        if not await self._until(lambda: self.agent_left or self.speech_after(since) is not None, timeout):
            return None
        first = self.speech_after(since)
        if first is None:
            raise AgentGone
        # a reply's length is its own: bounded only by the agent leaving or the caller's turn timeout
        await self._until(lambda: self.agent_left or self._reply_over(settle_s), timeout)
        last_speech = self._speech_times[-1]
        await self._until(lambda: any(at >= last_speech for at, _ in self._finals), stt_wait_s)
        text = " ".join(t for at, t in self._finals if at >= since)
        return Reply(first_audio_at=first, text=text)

    def _reply_over(self, settle_s: float) -> bool:
        quiet = not self._speech_times or time.monotonic() - self._speech_times[-1] >= settle_s
        return quiet and self.agent_state not in BUSY_STATES

    # --- speaking -----------------------------------------------------------------------------------------

    async def say(self, text: str, timeout: float) -> float:
        """Speak `text` (synthesised whole, then played in real time); the time its last sample was published."""
        pcm = await asyncio.wait_for(self._synthesize(text), timeout)
        if pcm.size == 0:
            raise RuntimeError(f"the caller's TTS returned no audio for {text!r}")
        self._spoken.clear()
        self._pending.append(pcm)
        await asyncio.wait_for(self._spoken.wait(), timeout + pcm.size / SAMPLE_RATE)
        return self._spoken_at

    async def _synthesize(self, text: str) -> np.ndarray:
        chunks: list[np.ndarray] = []
        resampler: rtc.AudioResampler | None = None
        async with self._tts.synthesize(text) as stream:
            async for audio in stream:
                frame = audio.frame
                if frame.num_channels != 1:
                    pcm = np.frombuffer(frame.data, dtype=np.int16).reshape(-1, frame.num_channels)
                    frame = rtc.AudioFrame(pcm.mean(axis=1).astype(np.int16).tobytes(), frame.sample_rate, 1, len(pcm))
                if frame.sample_rate == SAMPLE_RATE:
                    chunks.append(np.frombuffer(frame.data, dtype=np.int16).copy())
                    continue
                resampler = resampler or rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE, num_channels=1)
                chunks += [np.frombuffer(f.data, dtype=np.int16).copy() for f in resampler.push(frame)]
        if resampler is not None:
            chunks += [np.frombuffer(f.data, dtype=np.int16).copy() for f in resampler.flush()]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    async def _microphone(self) -> None:
        assert self._source is not None
        await pace_microphone(self._source, self._pending, self._spoke)

    def _spoke(self, at: float) -> None:
        self._spoken_at = at
        self._spoken.set()

    # --- the end ------------------------------------------------------------------------------------------

    async def hang_up(self) -> None:
        """Leave the room (the agent's call ends as `participant_left`) and stop listening."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._stt_stream is not None:
            await self._stt_stream.aclose()
        await self.room.disconnect()


async def pace_microphone(
    source: rtc.AudioSource, pending: list[np.ndarray], on_speech_end: Callable[[float], None]
) -> None:
    """A microphone in real time: every 10 ms one frame of the first `pending` chunk (consumed as it goes), or
    silence; `on_speech_end(monotonic time)` once the last queued sample is published. Runs until cancelled."""
    silence = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
    next_at = time.monotonic()
    speaking = False
    while True:
        if pending:
            chunk = pending[0]
            frame, rest = chunk[:SAMPLES_PER_FRAME], chunk[SAMPLES_PER_FRAME:]
            if len(frame) < SAMPLES_PER_FRAME:
                frame = np.concatenate([frame, silence[: SAMPLES_PER_FRAME - len(frame)]])
            if rest.size:
                pending[0] = rest
            else:
                pending.pop(0)
            speaking = True
        else:
            frame = silence
            if speaking:
                speaking = False
                on_speech_end(time.monotonic())
        await source.capture_frame(rtc.AudioFrame(frame.tobytes(), SAMPLE_RATE, 1, SAMPLES_PER_FRAME))
        next_at += FRAME_MS / 1000
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.2:  # fell far behind (a busy machine): resynchronise rather than burst
            next_at = time.monotonic()
