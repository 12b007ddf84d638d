"""Speech doubles with fixed, configurable latencies: a batch STT and a chunked TTS.

`FakeSTT` is non-streaming, so AgentSession wraps it in `stt.StreamAdapter` with the session
VAD: VAD end-of-speech triggers `recognize()`, which answers `latency_s` later with a scripted
final transcript. `FakeTTS` is non-streaming too (the session adds `tts.StreamAdapter`, one
`synthesize()` per sentence); each request waits `ttfb_s`, then emits a quiet 24 kHz mono tone
whose length follows the text. Every request is recorded with `time.time()` timestamps.
Set `fail_with` (also after construction) to make every later request raise that error.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from livekit import rtc
from livekit.agents import stt, tts, utils
from livekit.agents._exceptions import APIError
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

__all__ = ["FakeSTT", "FakeTTS", "STTRequest", "TTSRequest"]


@dataclass
class STTRequest:
    index: int
    requested_at: float
    audio_duration: float
    transcript: str = ""
    responded_at: float | None = None
    error: APIError | None = None


TranscriptFn = Callable[[rtc.AudioFrame], str]


class FakeSTT(stt.STT):
    """`transcripts` are used in order, one per recognition, then `default_transcript`;
    a callable gets the merged utterance audio and returns the text."""

    def __init__(
        self,
        transcripts: Sequence[str] | TranscriptFn | None = None,
        *,
        latency_s: float = 0.1,
        default_transcript: str = "Hello.",
        language: str = "en",
        fail_with: APIError | None = None,
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._transcripts = transcripts
        self._next_index = 0
        self.latency_s = latency_s
        self.default_transcript = default_transcript
        self._language = language
        self.fail_with = fail_with
        self.requests: list[STTRequest] = []

    @property
    def model(self) -> str:
        return "fake-stt"

    @property
    def provider(self) -> str:
        return "fake"

    def _transcript_for(self, audio: rtc.AudioFrame) -> str:
        if callable(self._transcripts):
            return self._transcripts(audio)
        if self._transcripts is not None and self._next_index < len(self._transcripts):
            text = self._transcripts[self._next_index]
            self._next_index += 1
            return text
        return self.default_transcript

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        request = STTRequest(
            index=len(self.requests),
            requested_at=time.time(),
            audio_duration=utils.audio.calculate_audio_duration(buffer),
        )
        self.requests.append(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.fail_with is not None:
            request.error = self.fail_with
            raise self.fail_with

        request.transcript = self._transcript_for(utils.merge_frames(buffer))
        request.responded_at = time.time()
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=f"fake-stt-{request.index}",
            alternatives=[
                stt.SpeechData(
                    language=LanguageCode(language if isinstance(language, str) else self._language),
                    text=request.transcript,
                    confidence=1.0,
                )
            ],
        )


@dataclass
class TTSRequest:
    index: int
    text: str
    requested_at: float
    first_byte_at: float | None = None
    finished_at: float | None = None
    audio_duration: float = 0.0
    error: APIError | None = None


class FakeTTS(tts.TTS):
    """`realtime_factor` paces the emitted audio (2.0 = twice real time, None = all at once
    after the first byte); the clip lasts `seconds_per_char` per character, at least
    `min_duration_s`."""

    def __init__(
        self,
        *,
        ttfb_s: float = 0.1,
        sample_rate: int = 24000,
        realtime_factor: float | None = 2.0,
        seconds_per_char: float = 0.06,
        min_duration_s: float = 0.3,
        chunk_ms: int = 20,
        tone_hz: float = 220.0,
        fail_with: APIError | None = None,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self.ttfb_s = ttfb_s
        self.realtime_factor = realtime_factor
        self.seconds_per_char = seconds_per_char
        self.min_duration_s = min_duration_s
        self.chunk_ms = chunk_ms
        self.tone_hz = tone_hz
        self.fail_with = fail_with
        self.requests: list[TTSRequest] = []

    @property
    def model(self) -> str:
        return "fake-tts"

    @property
    def provider(self) -> str:
        return "fake"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> FakeChunkedStream:
        return FakeChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def render(self, text: str) -> np.ndarray:
        """The int16 samples this TTS speaks for `text`."""
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        duration = max(len(text.strip()) * self.seconds_per_char, self.min_duration_s)
        t = np.arange(round(duration * self.sample_rate)) / self.sample_rate
        # short fades avoid clicks that a VAD listening to the agent could take for speech onsets
        envelope = np.minimum(1.0, np.minimum(t, duration - t) / 0.01)
        return (3000 * envelope * np.sin(2 * math.pi * self.tone_hz * t)).astype(np.int16)


class FakeChunkedStream(tts.ChunkedStream):
    def __init__(self, *, tts: FakeTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._fake = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        fake = self._fake
        request = TTSRequest(index=len(fake.requests), text=self._input_text, requested_at=time.time())
        fake.requests.append(request)
        try:
            output_emitter.initialize(
                request_id=f"fake-tts-{request.index}",
                sample_rate=fake.sample_rate,
                num_channels=1,
                mime_type="audio/pcm",
            )
            if fake.ttfb_s:
                await asyncio.sleep(fake.ttfb_s)
            if fake.fail_with is not None:
                request.error = fake.fail_with
                raise fake.fail_with

            pcm = fake.render(self._input_text)
            chunk = max(fake.sample_rate * fake.chunk_ms // 1000, 1)
            started = time.perf_counter()
            for offset in range(0, len(pcm), chunk):
                if fake.realtime_factor:
                    due = started + offset / fake.sample_rate / fake.realtime_factor
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if request.first_byte_at is None:
                    request.first_byte_at = time.time()
                output_emitter.push(pcm[offset : offset + chunk].tobytes())
                request.audio_duration += min(chunk, len(pcm) - offset) / fake.sample_rate
            output_emitter.flush()
        finally:
            request.finished_at = time.time()
