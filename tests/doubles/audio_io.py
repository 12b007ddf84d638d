"""Audio I/O for an AgentSession started without a room.

`ScriptedAudioInput` plays the caller: it yields mono frames (10 ms unless told; livekit's room input
delivers 50 ms) on a real-time schedule from
queued clips and pauses, and an open line (silence) whenever nothing is queued, the way a phone
microphone keeps sending audio. It stamps when each speech span's first and last frames were
delivered; the last one is the caller's end of speech.

`CapturingAudioOutput` plays the agent's loudspeaker: it keeps every frame, simulates playout
in real time (scaled by `playback_speed`) from the first frame of a segment, honours
pause/resume and `clear_buffer` (barge-in), and reports `playback_started` /
`playback_finished` as livekit's own sinks do. A segment is what the session captures between
flushes, normally one agent reply.

Assign both before `session.start()`:
`session.input.audio = ScriptedAudioInput(...)`, `session.output.audio = CapturingAudioOutput()`.
All timestamps are `time.time()` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc
from livekit.agents.voice import io

from .wav_fixtures import Clip, silence

__all__ = ["CapturingAudioOutput", "PlayoutSegment", "ScriptedAudioInput", "SpeechMark"]

FRAME_S = 0.01  # default frame length


class _Waiters:
    """Futures resolved when a predicate over the double's state becomes true."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    async def until(self, predicate: Callable[[], bool], timeout: float | None) -> None:
        if predicate():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((predicate, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting = [(p, f) for p, f in self._waiting if f is not fut]

    def notify(self) -> None:
        for predicate, fut in self._waiting:
            if not fut.done() and predicate():
                fut.set_result(None)


@dataclass
class SpeechMark:
    """One caller utterance as delivered to the session."""

    index: int
    text: str
    duration: float
    started_at: float | None = None
    ended_at: float | None = None
    """When the frame holding the utterance's last sample was handed to the session."""


@dataclass
class _Span:
    first_sample: int
    last_sample: int
    mark: SpeechMark


class ScriptedAudioInput(io.AudioInput):
    """`ScriptedAudioInput([clip, 2.0, other_clip])`; floats are pauses in seconds.
    `speed` > 1 delivers frames faster than real time (endpointing timers stay wall-clock)."""

    def __init__(
        self,
        segments: Iterable[Clip | float] = (),
        *,
        sample_rate: int = 16000,
        speed: float = 1.0,
        frame_s: float = FRAME_S,
        label: str = "ScriptedAudioInput",
    ) -> None:
        super().__init__(label=label)
        if speed <= 0:
            raise ValueError("speed must be positive")
        if frame_s <= 0:
            raise ValueError("frame_s must be positive")
        self.sample_rate = sample_rate
        self.speed = speed
        self.frame_s = frame_s
        self._frame_samples = round(sample_rate * frame_s)
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self._spans: list[_Span] = []
        self._queue_end = 0
        self._delivered = 0
        self._frames_out = 0
        self._t0: float | None = None
        self._closed = False
        self._waiters = _Waiters()
        self.speech: list[SpeechMark] = []
        self.enqueue(*segments)

    def enqueue(self, *segments: Clip | float) -> None:
        """Queue more caller audio; it starts at the next frame if the line is idle."""
        for segment in segments:
            clip = silence(segment, self.sample_rate) if isinstance(segment, (int, float)) else segment
            if clip.sample_rate != self.sample_rate:
                raise ValueError(f"clip at {clip.sample_rate} Hz, input runs at {self.sample_rate} Hz")
            # whole frames only, so no frame ever straddles two queued chunks
            pad = -len(clip.pcm) % self._frame_samples
            pcm = np.concatenate([clip.pcm, np.zeros(pad, dtype=np.int16)]) if pad else clip.pcm
            start = max(self._queue_end, self._delivered)
            for i, (span_start, span_end) in enumerate(clip.speech_spans):
                mark = SpeechMark(
                    index=len(self.speech),
                    text=clip.texts[i] if i < len(clip.texts) else "",
                    duration=span_end - span_start,
                )
                self.speech.append(mark)
                first = start + round(span_start * self.sample_rate)
                last = start + max(round(span_end * self.sample_rate) - 1, 0)
                self._spans.append(_Span(first, min(last, start + len(clip.pcm) - 1), mark))
            if len(pcm):
                self._chunks.append((start, pcm.astype(np.int16, copy=False)))
            self._queue_end = start + len(pcm)

    @property
    def speech_ended_at(self) -> list[float | None]:
        return [mark.ended_at for mark in self.speech]

    @property
    def idle(self) -> bool:
        """Everything queued has been delivered; the line now carries silence."""
        return self._delivered >= self._queue_end

    async def wait_for_speech_end(self, index: int, timeout: float | None = None) -> SpeechMark:
        await self._waiters.until(lambda: index < len(self.speech) and self.speech[index].ended_at is not None, timeout)
        return self.speech[index]

    async def wait_idle(self, timeout: float | None = None) -> None:
        await self._waiters.until(lambda: self.idle, timeout)

    def close(self) -> None:
        """End the stream: the session sees the microphone go away."""
        self._closed = True

    async def __anext__(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        # an absolute schedule, so a late consumer catches up instead of drifting
        due = self._t0 + self._frames_out * self.frame_s / self.speed
        if due > now:
            await asyncio.sleep(due - now)
        if self._closed:
            raise StopAsyncIteration

        n = self._frame_samples
        begin = self._delivered
        samples = np.zeros(n, dtype=np.int16)
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= begin:
            self._chunks.popleft()
        if self._chunks and self._chunks[0][0] <= begin:
            chunk_start, pcm = self._chunks[0]
            samples = pcm[begin - chunk_start : begin - chunk_start + n]
        self._delivered += n
        self._frames_out += 1

        # the frame's place on the schedule: a late frame is followed by frames that catch up, so the audio after it
        # reaches the VAD on schedule, and waits measured from a late delivery would come out short (seen: a VAD
        # "early" by 3.6 ms on a busy machine). Speech starts and ends where the schedule puts it.
        delivered_at = time.time() - max(0.0, time.perf_counter() - due)
        for span in self._spans:
            if span.mark.started_at is None and begin <= span.first_sample < begin + n:
                span.mark.started_at = delivered_at
            if span.mark.ended_at is None and begin <= span.last_sample < begin + n:
                span.mark.ended_at = delivered_at
        self._spans = [s for s in self._spans if s.mark.ended_at is None]
        self._waiters.notify()

        return rtc.AudioFrame(
            data=samples.tobytes(),
            sample_rate=self.sample_rate,
            num_channels=1,
            samples_per_channel=n,
        )


@dataclass
class PlayoutSegment:
    index: int
    first_frame_at: float
    frames: list[rtc.AudioFrame] = field(default_factory=list)
    pushed_duration: float = 0.0
    flushed_at: float | None = None
    finished_at: float | None = None
    interrupted: bool = False
    playback_position: float = 0.0

    @property
    def pcm(self) -> np.ndarray:
        if not self.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in self.frames])


class CapturingAudioOutput(io.AudioOutput):
    """`sample_rate=None` accepts whatever the TTS produces; a rate makes the session resample."""

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        playback_speed: float = 1.0,
        can_pause: bool = True,
        label: str = "CapturingAudioOutput",
    ) -> None:
        super().__init__(
            label=label,
            capabilities=io.AudioOutputCapabilities(pause=can_pause),
            next_in_chain=None,
            sample_rate=sample_rate,
        )
        if playback_speed <= 0:
            raise ValueError("playback_speed must be positive")
        self.playback_speed = playback_speed
        self.segments: list[PlayoutSegment] = []
        self.clear_count = 0
        self._capturing: PlayoutSegment | None = None
        self._playing: PlayoutSegment | None = None
        self._interrupt_requested = False
        self._paused = False
        self._played_before = 0.0
        self._resumed_at = 0.0
        self._wake = asyncio.Event()
        self._playout_task: asyncio.Task[None] | None = None
        self._waiters = _Waiters()

    @property
    def first_frame_times(self) -> list[float]:
        return [seg.first_frame_at for seg in self.segments]

    def _position(self) -> float:
        played = self._played_before
        if not self._paused:
            played += (time.perf_counter() - self._resumed_at) * self.playback_speed
        seg = self._playing or self._capturing
        return min(played, seg.pushed_duration) if seg else played

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self._capturing is None and self._playout_task and not self._playout_task.done():
            # one loudspeaker: the next segment waits for the previous one to finish playing
            await self._playout_task
        await super().capture_frame(frame)
        if self._capturing is None:
            self._capturing = PlayoutSegment(index=len(self.segments), first_frame_at=time.time())
            self.segments.append(self._capturing)
            self._interrupt_requested = False
            self._played_before = 0.0
            self._resumed_at = time.perf_counter()
            self.on_playback_started(created_at=self._capturing.first_frame_at)
            self._waiters.notify()
        self._capturing.frames.append(frame)
        self._capturing.pushed_duration += frame.duration

    def flush(self) -> None:
        super().flush()
        seg, self._capturing = self._capturing, None
        if seg is None:
            return
        seg.flushed_at = time.time()
        self._playing = seg
        self._playout_task = asyncio.create_task(self._play_out(seg), name="CapturingAudioOutput.play_out")

    def clear_buffer(self) -> None:
        self.clear_count += 1
        if self._capturing is None and self._playing is None:
            return
        self._interrupt_requested = True
        self._wake.set()

    def pause(self) -> None:
        super().pause()
        if not self._paused:
            self._played_before = self._position()
            self._paused = True
            self._wake.set()

    def resume(self) -> None:
        super().resume()
        if self._paused:
            self._paused = False
            self._resumed_at = time.perf_counter()
            self._wake.set()

    async def _play_out(self, seg: PlayoutSegment) -> None:
        while True:
            position = self._position()
            if self._interrupt_requested:
                self._finish(seg, position=position, interrupted=True)
                return
            remaining = seg.pushed_duration - position
            if remaining <= 0:
                self._finish(seg, position=seg.pushed_duration, interrupted=False)
                return
            self._wake.clear()
            timeout = None if self._paused else remaining / self.playback_speed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _finish(self, seg: PlayoutSegment, *, position: float, interrupted: bool) -> None:
        seg.finished_at = time.time()
        seg.interrupted = interrupted
        seg.playback_position = position
        self._playing = None
        self._interrupt_requested = False
        self.on_playback_finished(playback_position=position, interrupted=interrupted)
        self._waiters.notify()

    async def wait_for_segment(self, index: int, timeout: float | None = None) -> PlayoutSegment:
        """Wait for the first frame of segment `index` (0-based)."""
        await self._waiters.until(lambda: len(self.segments) > index, timeout)
        return self.segments[index]

    async def wait_for_playout_of(self, index: int, timeout: float | None = None) -> PlayoutSegment:
        """Wait until segment `index` has finished playing or was interrupted."""
        await self._waiters.until(
            lambda: len(self.segments) > index and self.segments[index].finished_at is not None,
            timeout,
        )
        return self.segments[index]

    async def aclose(self) -> None:
        if self._playout_task and not self._playout_task.done():
            self._interrupt_requested = True
            self._wake.set()
            await self._playout_task
