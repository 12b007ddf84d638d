"""The call simulator: whole voice calls through the real worker bootstrap, without a LiveKit server.

One simulated call is what a job process does for a real one, minus the room: real signed dispatch metadata
in a fake job context, `calls.bootstrap.start_call` (verify, admit against the file catalog, seed variables,
build the session from the pipeline config, greet), the real `AgentSession` with the real Silero VAD and
turn handling (`pipelines.vad.SharedVAD`, `pipelines.turn_handling`), the real supervisor. Only the
providers are doubles with fixed latencies (tests/doubles and here: the STT's final transcript comes `stt_s` after
the end of speech, the LLM's first token comes `llm_ttft_s` after the request and one word every `llm_token_s`, the
TTS's first audio comes `tts_ttfb_s` after its first text), and the room is replaced by a scripted caller
(espeak-ng speech fed in real time as 50 ms frames, as livekit's room input delivers a participant's audio)
and a capturing loudspeaker.

The caller is reactive, as a person is: each utterance starts `think_s` after the agent's previous reply
has finished playing (or, for a barge-in turn, `barge_in_after_s` after it started).

Per call the simulator records when `start_call` was entered and when the greeting's first frame played
(`CallRecord.call_start_ms` takes the TTS double's latency off), the transcript, and per turn the end of the
caller's speech and the agent's first audio, split three ways (`TurnRecord`):
- endpointing wait: what the VAD has to wait for this audio with the call's options (the minimum silence the
  endpointing rule sets, plus the time Silero's speech probability takes to fall), free of any processing
  delay: after the call, the call's own VAD stream (every frame it was fed) is replayed through a fresh VAD
  with the same options (`_Doubles.exact_waits`); stock livekit's shared VAD, which cannot be replayed per
  call, uses an offline table of the same clip at the same window alignment (`vad_waits`), right to a frame;
- provider time: the doubles' configured latencies (STT + LLM time to first token + TTS time to first byte);
- overhead: the rest, which is what the worker, livekit-agents and the machine's load add.
`TurnRecord.overhead_nominal_ms` judges the same turn against the configured endpointing delay instead (the
formula of the platform's baseline notes on stock livekit-agents 1.8.9), so Silero's lag
counts as overhead there; both are reported side by side.

`StreamingFakeTTS` lives here rather than in tests/doubles because only the simulator needs it: it is the
streaming counterpart of `FakeTTS` (audio `ttfb_s` after the first *word*, as Deepgram's streaming TTS
behaves), which is what the stock baseline measured with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from livekit import rtc
from livekit.agents import AgentSession, JobContext, llm, stt, tts, utils
from livekit.agents.testing import fake_job_context
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.vad import VADEventType
from livekit.agents.voice.events import UserStateChangedEvent
from livekit.agents.voice.room_io import AudioInputOptions
from livekit.agents.voice.turn import TurnHandlingOptions
from livekit.plugins import silero

from calls.bootstrap import start_call
from calls.call import Call, CallServices
from catalog.loader import CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from contract.dispatch import DispatchRequest, mint_dispatch_metadata
from contract.settings import EXAMPLE_CATALOG
from pipelines.builder import BuiltPipeline, build_pipeline
from pipelines.vad import MAX_BUFFERED_SPEECH_S, PREFIX_PADDING_S, SharedVAD, silero_options
from tests.doubles.audio_io import CapturingAudioOutput, ScriptedAudioInput
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.fake_speech import FakeSTT, FakeTTS, STTRequest
from tests.doubles.wav_fixtures import Clip, synthesize_speech
from worker.settings import Settings

__all__ = [
    "SALES",
    "VAD_PERIOD",
    "CallRecord",
    "CallScript",
    "CallerTurn",
    "Environment",
    "Latencies",
    "StreamingFakeTTS",
    "Tuning",
    "TurnRecord",
    "default_script",
    "percentile",
    "run_call",
]

SALES = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02")
SPEECH_CACHE = Path(tempfile.gettempdir()) / "voice-worker-speech-cache"
ROUTER_TOOL_PREFIX = "choose_"
STEP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Latencies:
    """The doubles' fixed latencies (the stock baseline's figures by default)."""

    stt_s: float = 0.100
    llm_ttft_s: float = 0.300
    llm_token_s: float = 0.020
    tts_ttfb_s: float = 0.100
    router_s: float = 0.250


@dataclass(frozen=True)
class CallerTurn:
    """What the caller says, and what the LLM double answers to it. `barge_in` makes the caller start
    speaking while the agent's previous reply is still playing."""

    says: str
    reply: str
    barge_in: bool = False


@dataclass(frozen=True)
class CallScript:
    turns: tuple[CallerTurn, ...]
    agent_id: uuid.UUID | None = SALES
    team_id: uuid.UUID | None = None
    context_variables: dict[str, Any] | None = None
    think_s: float = 0.5
    """Silence between the end of the agent's audio and the caller's next words."""
    lead_in_s: float = 0.3
    """Silence before the first words when the caller speaks first."""
    barge_in_after_s: float = 0.8
    """How long into the agent's reply a barge-in turn starts."""


def default_script(turns: int = 3) -> CallScript:
    """The benchmark's call: the sales agent (500 ms endpointing, VAD turn detection), `turns` short turns."""
    lines = [
        CallerTurn("I would like to know what the pro plan costs", "Pro is sixty dollars per seat per month."),
        CallerTurn("We are a team of about twelve people", "Twelve seats of Pro come to seven hundred twenty."),
        CallerTurn("Can you send me a quote by email please", "Of course, I will send the quote today."),
        CallerTurn("Is there a discount for a yearly plan", "Yes, a yearly plan saves two months."),
        CallerTurn("Thank you that is all I needed", "Thanks for calling Acme, goodbye."),
    ]
    return CallScript(turns=tuple(lines[i % len(lines)] for i in range(turns)))


@dataclass(frozen=True)
class Tuning:
    """What the call runs with.

    `stock`: the pipeline pieces as stock livekit-agents would build them (one `silero.VAD.load()` object
    shared by every call of the process with Silero's default options, `TurnHandlingOptions(turn_detection=
    "vad", endpointing min_delay = the config's)`); otherwise `pipelines.builder.build_pipeline` (per-call
    VAD object over the shared model, the endpointing rule) with its providers swapped for the doubles.
    `text_transforms`: livekit's default (`filter_markdown`, `filter_emoji`), or `"none"`
    (`tts_text_transforms=None`: the text goes to the TTS as the LLM streams it; the stock baseline saw the
    markdown filter hold the first token about 20 ms).
    `tts`: `"streaming"` (`StreamingFakeTTS`, like Deepgram) or `"sentence"` (`FakeTTS` behind livekit's
    sentence tokenizer, like OpenAI's TTS).
    `stt`: `"streaming"` (`StreamingFakeSTT`, like Deepgram, the example pipelines' first STT) or `"batch"`
    (`FakeSTT`, like OpenAI's transcription endpoint: livekit runs it behind a second VAD stream and asks it
    once that VAD has let go of the speech).
    `vad`: `"native"` (what the worker runs: livekit-local-inference's native Silero, as pipelines/vad.py
    builds it) or `"plugin"` (for comparison: the ONNX Runtime plugin, `livekit.plugins.silero`, one ONNX
    session per process and one VAD object per call with the same options)."""

    stock: bool = False
    text_transforms: Literal["default", "none"] = "default"
    tts: Literal["streaming", "sentence"] = "streaming"
    stt: Literal["streaming", "batch"] = "streaming"
    vad: Literal["native", "plugin"] = "native"
    aec_warmup: bool = True
    """False sets `aec_warmup_duration=None`: livekit ignores barge-in for the first 3 s of agent speech
    otherwise, which a barge-in script must turn off."""

    @property
    def label(self) -> str:
        parts = ["stock" if self.stock else "worker"]
        if self.text_transforms == "none":
            parts.append("no text transforms")
        if self.tts == "sentence":
            parts.append("sentence TTS")
        if self.stt == "batch":
            parts.append("batch STT")
        if self.vad == "plugin":
            parts.append("Silero plugin VAD")
        return ", ".join(parts)


DEFAULT_LATENCIES = Latencies()
DEFAULT_TUNING = Tuning()


# -- the streaming TTS double ------------------------------------------------------------------------------


@dataclass
class StreamRequest:
    index: int
    opened_at: float
    first_text_at: float | None = None
    first_byte_at: float | None = None
    text: str = ""


class StreamingFakeTTS(tts.TTS):
    """A streaming TTS double: audio for the text so far starts `ttfb_s` after the first text arrives and
    then follows the text as it streams in (0.06 s of a quiet tone per character, produced at
    `realtime_factor` times real time). Every stream is recorded with `time.time()` stamps."""

    def __init__(self, *, ttfb_s: float = 0.1, sample_rate: int = 24000, realtime_factor: float = 2.0) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=True), sample_rate=sample_rate, num_channels=1)
        self.ttfb_s = ttfb_s
        self.realtime_factor = realtime_factor
        self._voice = FakeTTS(ttfb_s=ttfb_s, sample_rate=sample_rate, realtime_factor=realtime_factor)
        self.requests: list[StreamRequest] = []

    @property
    def model(self) -> str:
        return "fake-streaming-tts"

    @property
    def provider(self) -> str:
        return "fake"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._voice.synthesize(text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> _FakeSynthesizeStream:
        return _FakeSynthesizeStream(tts=self, conn_options=conn_options)

    def render(self, text: str) -> np.ndarray:
        # no minimum length per piece: the pieces of one reply form one continuous utterance
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        samples = round(len(text) * self._voice.seconds_per_char * self.sample_rate)
        t = np.arange(samples) / self.sample_rate
        return (3000 * np.sin(2 * np.pi * self._voice.tone_hz * t)).astype(np.int16)


class _FakeSynthesizeStream(tts.SynthesizeStream):
    def __init__(self, *, tts: StreamingFakeTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._fake = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        fake = self._fake
        request = StreamRequest(index=len(fake.requests), opened_at=time.time())
        fake.requests.append(request)
        output_emitter.initialize(
            request_id=f"fake-stream-{request.index}",
            sample_rate=fake.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=f"fake-stream-{request.index}-0")
        pending: asyncio.Queue[str | None] = asyncio.Queue()

        async def read_text() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel) or not data:
                    continue
                if request.first_text_at is None:
                    request.first_text_at = time.time()
                request.text += data
                pending.put_nowait(data)
            pending.put_nowait(None)

        async def speak() -> None:
            piece = await pending.get()
            if piece is None:
                return
            await asyncio.sleep(fake.ttfb_s)
            chunk = fake.sample_rate // 50  # 20 ms
            started = time.perf_counter()
            produced = 0
            while piece is not None:
                pcm = fake.render(piece)
                for offset in range(0, len(pcm), chunk):
                    due = started + produced / fake.sample_rate / fake.realtime_factor
                    if (delay := due - time.perf_counter()) > 0:
                        await asyncio.sleep(delay)
                    if request.first_byte_at is None:
                        request.first_byte_at = time.time()
                    part = pcm[offset : offset + chunk]
                    output_emitter.push(part.tobytes())
                    produced += len(part)
                piece = await pending.get()

        reader = asyncio.create_task(read_text(), name="StreamingFakeTTS.read_text")
        try:
            await speak()
            await reader
        finally:
            reader.cancel()
        output_emitter.end_segment()


# -- the streaming STT double ------------------------------------------------------------------------------


class StreamingFakeSTT(stt.STT):
    """A streaming STT double, as Deepgram (the example catalog's first STT) is: it takes the caller's audio
    as it streams in and sends each utterance's final transcript `latency_s` after the caller stops speaking.
    It knows the utterances and when each ended from the scripted caller, so it has no recogniser to run.

    Streaming matters for fidelity: livekit wraps a non-streaming STT in a `StreamAdapter` with a second VAD
    stream of its own, which a Deepgram pipeline does not run. Requests are recorded as `FakeSTT`'s are."""

    def __init__(self, caller: ScriptedAudioInput, *, latency_s: float = 0.1) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self.caller = caller
        self.latency_s = latency_s
        self.requests: list[STTRequest] = []
        self._sent: set[int] = set()

    @property
    def model(self) -> str:
        return "fake-streaming-stt"

    @property
    def provider(self) -> str:
        return "fake"

    async def _recognize_impl(self, *_: Any, **__: Any) -> stt.SpeechEvent:
        # a one-shot request (livekit's session only streams this STT): the utterance the caller is in or has
        # just finished, `latency_s` later
        started_at = time.time()
        await asyncio.sleep(self.latency_s)
        spoken = [m for m in self.caller.speech if m.started_at is not None]
        text = spoken[-1].text if spoken else ""
        self.requests.append(
            STTRequest(
                index=len(self.requests),
                requested_at=started_at,
                audio_duration=spoken[-1].duration if spoken else 0.0,
                transcript=text,
                responded_at=time.time(),
            )
        )
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=f"fake-streaming-stt-{len(self.requests) - 1}",
            alternatives=[stt.SpeechData(language="en", text=text, confidence=1.0)],
        )

    def stream(
        self, *, language: Any = None, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> _FakeRecognizeStream:
        return _FakeRecognizeStream(stt=self, conn_options=conn_options)


class _FakeRecognizeStream(stt.RecognizeStream):
    def __init__(self, *, stt: StreamingFakeSTT, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._fake = stt

    async def _run(self) -> None:
        transcribe = asyncio.create_task(self._transcribe())
        try:
            async for _ in self._input_ch:  # the audio goes to "the provider"; nothing to do with it here
                pass
        finally:
            await utils.aio.cancel_and_wait(transcribe)

    async def _transcribe(self) -> None:
        fake, caller = self._fake, self._fake.caller
        index = 0
        while True:
            mark = await caller.wait_for_speech_end(index)
            index += 1
            if mark.index in fake._sent:  # sent by an earlier stream of this call (a handoff reopens it)
                continue
            fake._sent.add(mark.index)
            assert mark.ended_at is not None
            request = STTRequest(index=len(fake.requests), requested_at=mark.ended_at, audio_duration=mark.duration)
            fake.requests.append(request)
            await asyncio.sleep(max(mark.ended_at + fake.latency_s - time.time(), 0.0))
            request.transcript = mark.text
            request.responded_at = time.time()
            self._event_ch.send_nowait(
                stt.SpeechEvent(
                    type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                    request_id=f"fake-streaming-stt-{request.index}",
                    alternatives=[stt.SpeechData(language="en", text=mark.text, confidence=1.0)],
                )
            )


# -- the caller and what the VAD must wait for ------------------------------------------------------------

FRAME_S = AudioInputOptions().frame_size_ms / 1000  # what livekit's room input delivers (50 ms)
SAMPLE_RATE = 16000
FRAME_SAMPLES = round(SAMPLE_RATE * FRAME_S)
VAD_WINDOW = 512  # Silero's inference window at 16 kHz
VAD_LEAD_S = 1.0
VAD_TAIL_S = 1.5


class _Caller(ScriptedAudioInput):
    """The scripted caller, also counting the frames it has delivered: an utterance queued while the line is
    idle starts at the next frame, so its first sample's index in the caller's stream is known. It remembers
    the index of its recent frames, so that the VAD's stream (which starts a few frames later, when the session
    starts listening) can be lined up with it (`_Doubles.vad_offset`)."""

    def __init__(self) -> None:
        super().__init__(sample_rate=SAMPLE_RATE, frame_s=FRAME_S)
        self.frames_delivered = 0
        self._recent: dict[int, int] = {}

    async def __anext__(self) -> Any:
        frame = await super().__anext__()
        self._recent[id(frame)] = self.frames_delivered * FRAME_SAMPLES
        if len(self._recent) > 64:  # frames in flight are a handful; ids of freed frames get reused
            del self._recent[next(iter(self._recent))]
        self.frames_delivered += 1
        return frame

    def index_of(self, frame: Any) -> int | None:
        """The caller-stream index of a recent frame's first sample."""
        return self._recent.get(id(frame))

    def speak(self, clip: Clip) -> int:
        """Queue `clip` (the line must be idle); returns the caller-stream index of its first sample."""
        start = self.frames_delivered * FRAME_SAMPLES
        self.enqueue(clip)
        return start


VAD_PERIOD = math.lcm(FRAME_SAMPLES, VAD_WINDOW)  # frames and windows line up again every 800 ms


async def vad_waits(vad: Any, clip: Clip) -> dict[int, float]:
    """For each alignment of `clip` with the caller's frames and Silero's 512-sample windows (its first sample's
    stream index modulo `VAD_PERIOD`; 16 of them): how long after the clip's last sample the VAD reports the
    end of speech, in seconds of audio. This is the endpointing wait that the audio and the VAD's options
    alone decide (minimum silence plus the time Silero's smoothed speech probability takes to fall), free of
    any processing delay."""
    rate = clip.sample_rate

    async def one(phase: int) -> tuple[int, float | None]:
        lead = -(-round(VAD_LEAD_S * rate) // VAD_PERIOD) * VAD_PERIOD + phase
        pcm = np.concatenate([np.zeros(lead, np.int16), clip.pcm, np.zeros(round(VAD_TAIL_S * rate), np.int16)])
        pcm = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME_SAMPLES, np.int16)])
        stream = vad.stream()
        for offset in range(0, len(pcm), FRAME_SAMPLES):
            stream.push_frame(
                rtc.AudioFrame(
                    data=pcm[offset : offset + FRAME_SAMPLES].tobytes(),
                    sample_rate=rate,
                    num_channels=1,
                    samples_per_channel=FRAME_SAMPLES,
                )
            )
        stream.end_input()
        ends = [ev async for ev in stream if ev.type == VADEventType.END_OF_SPEECH]
        await stream.aclose()
        if not ends:
            return phase, None
        # The event comes with the frame that completes its window, and the caller's end of speech is stamped
        # when the frame holding the last sample is delivered (the input pads a clip to whole frames): the
        # wait is the distance between those two frames.
        detected = -(-ends[-1].samples_index // FRAME_SAMPLES) * FRAME_SAMPLES
        padded_end = lead + -(-len(clip.pcm) // FRAME_SAMPLES) * FRAME_SAMPLES
        return phase, (detected - padded_end) / rate

    results = await asyncio.gather(*(one(phase) for phase in range(0, VAD_PERIOD, FRAME_SAMPLES)))
    return {phase: wait for phase, wait in results if wait is not None}


# -- records -----------------------------------------------------------------------------------------------


@dataclass
class TurnRecord:
    """One caller turn. Times are `time.time()` seconds; durations are milliseconds.

    The turn's end-of-speech -> first agent audio (`total_ms`) is split into
    - `endpointing_ms`: what the VAD has to wait for this audio with these options (its minimum silence plus
      the time Silero's speech probability takes to fall), computed offline on the same samples at the same
      window alignment (`vad_waits`), so it is free of any processing delay;
    - `provider_ms`: what the doubles' configured latencies add after that wait on the critical path. A
      batch STT is asked once the VAD has let go; a streaming one has its final transcript `stt` after the
      end of speech. With preemptive generation (livekit's default, and the pipeline config's) the LLM starts
      on that final transcript, before the end of the turn is confirmed, and the TTS once it is (livekit's
      default `preemptive_tts=False`): the first audio can come at max(wait, final + LLM TTFT) + TTS TTFB;
      without it, at max(wait, final) + LLM TTFT + TTS TTFB;
    `vad_detected_ms` is when the live session's VAD actually reported the end of speech, and `stt_ms`,
    `llm_ttft_ms`, `tts_ttfb_ms` what the doubles measured on this turn's critical path (diagnostics)."""

    index: int
    says: str
    speech_ended_at: float
    vad_phase: int = 0
    clip_start: int | None = None
    clip_end: int | None = None
    """The utterance's first sample and the end of its last frame, as indexes of the caller's stream."""
    first_audio_at: float | None = None
    endpointing_ms: float | None = None
    endpointing_exact: bool = False
    """`endpointing_ms` comes from replaying the call's own VAD stream (`_Doubles.exact_waits`), not from the
    offline table."""
    configured_stt_ms: float = 0.0
    configured_llm_ttft_ms: float = 0.0
    configured_tts_ttfb_ms: float = 0.0
    stt_streaming: bool = False
    preemptive_generation: bool = True
    configured_endpointing_ms: float = 0.0
    vad_detected_ms: float | None = None
    stt_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_ttfb_ms: float | None = None
    router_ms: float | None = None
    interrupted_reply: bool = False
    """This turn's words cut the agent's previous reply short (barge-in)."""

    @property
    def answered(self) -> bool:
        return self.first_audio_at is not None

    @property
    def total_ms(self) -> float | None:
        return None if self.first_audio_at is None else (self.first_audio_at - self.speech_ended_at) * 1000

    def _providers_after(self, wait_ms: float) -> float:
        """Provider time on the critical path after an endpointing wait of `wait_ms` (see the class doc)."""
        final = self.configured_stt_ms if self.stt_streaming else wait_ms + self.configured_stt_ms
        if self.preemptive_generation:
            reply = max(wait_ms, final + self.configured_llm_ttft_ms)
        else:
            reply = max(wait_ms, final) + self.configured_llm_ttft_ms
        return reply + self.configured_tts_ttfb_ms - wait_ms

    @property
    def provider_ms(self) -> float | None:
        return None if self.endpointing_ms is None else self._providers_after(self.endpointing_ms)

    @property
    def overhead_ms(self) -> float | None:
        total, wait = self.total_ms, self.endpointing_ms
        return None if total is None or wait is None else total - wait - self._providers_after(wait)

    @property
    def overhead_nominal_ms(self) -> float | None:
        """The stock baseline's formula: first audio - end of speech - (configured endpointing delay + STT +
        TTFT + TTFB); unlike `overhead_ms` it also counts Silero's lag in letting go of the speech."""
        total = self.total_ms
        if total is None:
            return None
        return total - self.configured_endpointing_ms - self._providers_after(self.configured_endpointing_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "total_ms": self.total_ms,
            "provider_ms": self.provider_ms,
            "overhead_ms": self.overhead_ms,
            "overhead_nominal_ms": self.overhead_nominal_ms,
        }


@dataclass
class CallRecord:
    label: str
    agent_id: str
    entered_at: float
    """`start_call` is entered (the job's entrypoint has the dispatch)."""
    tts_ttfb_ms: float = 0.0
    started_at: float | None = None
    """`start_call` returned (session started, greeting scheduled)."""
    greeting_first_frame_at: float | None = None
    turns: list[TurnRecord] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)
    """(role, text) of the session's history, in order, greeting first."""
    segments: list[dict[str, Any]] = field(default_factory=list)
    ended_at: float | None = None
    end_reason: str | None = None
    error: str | None = None

    @property
    def call_start_ms(self) -> float | None:
        """Entrypoint entered -> first greeting frame, minus the TTS double's configured latency."""
        if self.greeting_first_frame_at is None:
            return None
        return (self.greeting_first_frame_at - self.entered_at) * 1000 - self.tts_ttfb_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "turns"},
            "call_start_ms": self.call_start_ms,
            "turns": [t.as_dict() for t in self.turns],
        }


# -- the process-wide part (what a job process's setup function holds) -------------------------------------


class Environment:
    """What one process holds for all its simulated calls: settings, the file catalog, the VAD model, the
    caller's speech and what the VAD must wait for at the end of each utterance. `Environment.create()` plus
    `prepare()` is the simulator's `setup_process`."""

    def __init__(self, settings: Settings, catalog: CatalogStore, vad: SharedVAD, speech_cache: Path) -> None:
        self.settings = settings
        self.catalog = catalog
        self.vad = vad
        self.speech_cache = speech_cache
        self._clips: dict[str, Clip] = {}
        self._stock_vad: silero.VAD | None = None
        self._plugin_session: Any = None
        self._vad_waits: dict[tuple[str, Any], dict[int, float]] = {}

    @classmethod
    def create(
        cls, *, catalog_path: Path = EXAMPLE_CATALOG, speech_cache: Path = SPEECH_CACHE, vad: SharedVAD | None = None
    ) -> Environment:
        settings = Settings(
            _env_file=None,
            VOICE_WORKER_MODE="dev",
            OPENAI_API_KEY="sk-test-not-real",
            DEEPGRAM_API_KEY="dg-test-not-real",
            CATALOG_PATH=str(catalog_path),
        )
        catalog = CatalogStore(catalog_path)
        catalog.get()
        return cls(settings, catalog, vad or SharedVAD.load(), speech_cache)

    @property
    def stock_vad(self) -> silero.VAD:
        """Stock livekit: one `silero.VAD.load()` for the whole process, every session subscribed to it."""
        if self._stock_vad is None:
            self._stock_vad = silero.VAD.load()
        return self._stock_vad

    def pipeline_for(self, script: CallScript) -> VoicePipelineConfig:
        """The pipeline config admission picks for the script's dispatch (a team's, else the agent's)."""
        catalog = self.catalog.get()
        if script.team_id is not None:
            return catalog.teams[script.team_id].pipeline
        assert script.agent_id is not None
        return catalog.agents[script.agent_id].active_revision.pipeline

    def plugin_vad(self, config: VoicePipelineConfig) -> silero.VAD:
        """The comparison VAD: the ONNX Runtime plugin, one session per process, one object per call with the
        options pipelines/vad.py gives the native one (how the worker ran before it moved to the native VAD)."""
        from livekit.plugins.silero import onnx_model
        from livekit.plugins.silero.vad import _VADOptions

        if self._plugin_session is None:
            self._plugin_session = onnx_model.new_inference_session(True)
        options = silero_options(config)
        return silero.VAD(
            session=self._plugin_session,
            opts=_VADOptions(
                min_speech_duration=options.min_speech_duration,
                min_silence_duration=options.min_silence_duration,
                prefix_padding_duration=PREFIX_PADDING_S,
                max_buffered_speech=MAX_BUFFERED_SPEECH_S,
                activation_threshold=options.activation_threshold,
                deactivation_threshold=options.deactivation_threshold,
                sample_rate=SAMPLE_RATE,
            ),
        )

    def call_vad(self, tuning: Tuning, config: VoicePipelineConfig) -> tuple[Any, Any]:
        """The VAD a call runs with, and a key for its options."""
        if tuning.stock:
            return f"stock {self.stock_vad._opts!r}", self.stock_vad
        if tuning.vad == "plugin":
            return f"plugin {silero_options(config)!r}", self.plugin_vad(config)
        return silero_options(config), self.vad.for_pipeline(config)

    def clip(self, text: str) -> Clip:
        if text not in self._clips:
            self._clips[text] = synthesize_speech(text, cache_dir=self.speech_cache)
        return self._clips[text]

    async def vad_waits(self, text: str, tuning: Tuning, config: VoicePipelineConfig) -> dict[int, float]:
        """`vad_waits` for this utterance and the call's VAD, cached beside the speech: they depend only on
        the samples and the options, and every job process of a density run would otherwise redo them."""
        key, vad = self.call_vad(tuning, config)
        if (text, key) in self._vad_waits:
            return self._vad_waits[(text, key)]
        clip = self.clip(text)
        digest = hashlib.sha256(
            clip.pcm.tobytes() + f"{key!r} silero {silero.__version__} frame {FRAME_SAMPLES} v2".encode()
        ).hexdigest()[:24]
        cached = self.speech_cache / f"vad-waits-{digest}.json"
        try:
            waits = {int(k): float(v) for k, v in json.loads(cached.read_text()).items()}
        except (OSError, ValueError):
            waits = await vad_waits(vad, clip)
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(waits))
            partial.replace(cached)  # atomic: concurrent job processes never read half a file
        self._vad_waits[(text, key)] = waits
        return waits

    async def aprepare(self, script: CallScript, tuning: Tuning = DEFAULT_TUNING) -> None:
        """Synthesise the script's speech and work out the VAD's waits now, so no call waits for either."""
        config = self.pipeline_for(script)
        for turn in script.turns:
            await self.vad_waits(turn.says, tuning, config)

    def prepare(self, script: CallScript, tuning: Tuning = DEFAULT_TUNING) -> None:
        """`aprepare` for a setup function, which livekit calls without a running event loop."""
        asyncio.run(self.aprepare(script, tuning))

    def metadata(self, script: CallScript) -> str:
        return mint_dispatch_metadata(
            DispatchRequest(
                session_id=uuid.uuid4(),
                session_type="simulation",
                agent_id=script.agent_id,
                team_id=script.team_id,
                context_variables=script.context_variables,
            ),
            secret=self.settings.signing_secret(),
            issuer=self.settings.dispatch_issuer,
        )


# -- one call ----------------------------------------------------------------------------------------------


def _is_router_request(tools: Sequence[Any]) -> bool:
    """A request offering exactly one `choose_*` tool is the constrained router's (tools or their names)."""
    if len(tools) != 1:
        return False
    name = tools[0] if isinstance(tools[0], str) else getattr(tools[0], "id", "")
    return str(name).startswith(ROUTER_TOOL_PREFIX)


def _router_choice(tool: llm.Tool) -> str:
    """The first option the router offers (a real name, so the supervisor applies a procedure)."""
    info = getattr(tool, "info", None)
    schema = getattr(info, "raw_schema", {}) or {}
    enum = schema.get("parameters", {}).get("properties", {}).get("name", {}).get("enum") or ["none"]
    return str(enum[0])


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w']+", " ", text.lower()).split())


@dataclass
class VadFeed:
    """What one VAD stream of a call was fed: its frames, and the caller-stream index of the first sample."""

    frames: list[rtc.AudioFrame] = field(default_factory=list)
    first_index: int | None = None
    samples: int = 0
    """How many samples of the caller's, in order from `first_index`, the frames hold."""
    sealed: bool = False
    """Fed something that is not the caller's next frame (livekit pushes silence as the session closes): what
    came before can still be replayed, nothing after."""
    broken: bool = False
    """Flushed: the VAD's state was reset mid-stream, the replay would not be the same."""

    def add(self, frame: rtc.AudioFrame, index: int | None) -> None:
        if self.sealed:
            return
        if self.first_index is None:
            self.first_index = index
        if index is None or self.first_index is None or index != self.first_index + self.samples:
            self.sealed = True
            return
        self.frames.append(frame)
        self.samples += frame.samples_per_channel

    def covers(self, first: int, last: int) -> bool:
        return (
            not self.broken
            and self.first_index is not None
            and self.first_index <= first
            and last <= self.first_index + self.samples
        )

    async def replay(self, vad: Any) -> list[int]:
        """The END_OF_SPEECH sample indexes of a fresh `vad` fed the same frames."""
        stream = vad.stream()
        for frame in self.frames:
            stream.push_frame(frame)
        stream.end_input()
        ends = [ev.samples_index async for ev in stream if ev.type == VADEventType.END_OF_SPEECH]
        await stream.aclose()
        return ends


class _Doubles:
    """One call's providers and audio, and the session events the records are made from."""

    def __init__(self, env: Environment, script: CallScript, latencies: Latencies, tuning: Tuning) -> None:
        self.env = env
        self.latencies = latencies
        self.tuning = tuning
        self.caller = _Caller()
        self.speaker = CapturingAudioOutput()
        self.stt: StreamingFakeSTT | FakeSTT = (
            StreamingFakeSTT(self.caller, latency_s=latencies.stt_s)
            if tuning.stt == "streaming"
            else FakeSTT(self._transcript, latency_s=latencies.stt_s)
        )
        self.llm = FakeLLM(
            self._reply, default_ttft_s=latencies.llm_ttft_s, default_token_interval_s=latencies.llm_token_s
        )
        self.tts: StreamingFakeTTS | FakeTTS = (
            StreamingFakeTTS(ttfb_s=latencies.tts_ttfb_s)
            if tuning.tts == "streaming"
            else FakeTTS(ttfb_s=latencies.tts_ttfb_s)
        )
        self.replies = {normalize(t.says): t.reply for t in script.turns}
        self.vad_detections: list[float] = []
        self.pipeline: VoicePipelineConfig | None = None
        self.built: BuiltPipeline | None = None
        self.vad_offset = 0
        """Caller-stream index minus VAD-stream index of the same sample: the VAD's stream starts when the
        session starts listening, a few frames after the caller's. Known once the VAD has had a frame."""
        self.vad_feeds: list[VadFeed] = []

    def _transcript(self, _audio: Any) -> str:
        # the utterance the caller is in (or just finished): robust to how the VAD segments it
        started = [m for m in self.caller.speech if m.started_at is not None]
        return started[-1].text if started else ""

    def _reply(self, chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
        if _is_router_request(tools):
            return Reply(
                tool_calls=[(tools[0].id, {"name": _router_choice(tools[0])})],
                ttft_s=self.latencies.router_s,
                token_interval_s=0.0,
            )
        for item in reversed(chat_ctx.items):
            if isinstance(item, llm.ChatMessage) and item.role == "user":
                return Reply(text=self.replies.get(normalize(item.text_content or ""), "Okay."))
        return Reply(text="Hello, how can I help?")

    def session_kwargs(self, config: VoicePipelineConfig) -> dict[str, Any]:
        """`CallServices.session_kwargs`: the call's real pipeline (or stock livekit's), doubles for providers."""
        self.pipeline = config
        if self.tuning.stock:
            kwargs: dict[str, Any] = {
                "vad": self.env.stock_vad,
                "turn_handling": TurnHandlingOptions(
                    turn_detection="vad", endpointing={"min_delay": config.endpointing_min_delay_ms / 1000}
                ),
            }
        else:
            # built as the worker builds it (provider clients included, so their cost counts), then the
            # providers are swapped for the doubles; the built ones are closed with the call
            self.built = build_pipeline(config, self.env.settings, vad=self.env.vad)
            kwargs = self.built.session_kwargs()
        if self.tuning.vad == "plugin" and not self.tuning.stock:
            kwargs["vad"] = self.env.plugin_vad(config)
        if not self.tuning.stock:  # the stock VAD is one object for the whole process: left as it is
            self._line_up(kwargs["vad"])
        kwargs.update(stt=self.stt, llm=self.llm, tts=self.tts, session_close_transcript_timeout=0.1)
        if self.tuning.text_transforms == "none":
            kwargs["tts_text_transforms"] = None
        if not self.tuning.aec_warmup:
            kwargs["aec_warmup_duration"] = None
        return kwargs

    def _line_up(self, vad: Any) -> None:
        """Record what this call's VAD streams are fed (`VadFeed`), to line their sample index up with the
        caller's and to replay the exact stream afterwards (`exact_waits`)."""
        open_stream = vad.stream

        def stream() -> Any:
            opened = open_stream()
            feed = VadFeed()
            self.vad_feeds.append(feed)
            push, flush = opened.push_frame, opened.flush

            def recording_push(frame: rtc.AudioFrame) -> None:
                index = self.caller.index_of(frame)
                if index is not None:
                    self.vad_offset = index - feed.samples
                feed.add(frame, index)
                push(frame)

            def recording_flush() -> None:
                feed.broken = True  # a flush resets the VAD's state mid-stream: no exact replay
                flush()

            opened.push_frame, opened.flush = recording_push, recording_flush
            return opened

        vad.stream = stream

    async def exact_waits(self, record: CallRecord) -> None:
        """Replace each turn's endpointing wait (from the offline table, which starts the VAD fresh on the clip
        alone) by the wait of the VAD on this call's own stream: the same samples from the call's first frame,
        through a fresh VAD with the same options, so that the VAD's state at the end of the utterance is the
        live one. With 50 ms frames a state that differs by one 32 ms window moves the decision by a frame."""
        config = self.pipeline
        if config is None:
            return
        replayed: dict[int, list[int]] = {}
        for turn in record.turns:
            if turn.clip_start is None or turn.clip_end is None:
                continue
            feed = next((f for f in self.vad_feeds if f.covers(turn.clip_start, turn.clip_end)), None)
            if feed is None or feed.first_index is None:
                continue
            key = id(feed)
            if key not in replayed:
                replayed[key] = await feed.replay(self.env.call_vad(self.tuning, config)[1])
            start, end = turn.clip_start - feed.first_index, turn.clip_end - feed.first_index
            ends = [e for e in replayed[key] if e > start]
            if ends:
                # the event comes with the frame that completes its window; the caller's end of speech is
                # stamped as the frame holding the last sample is delivered (clips are padded to whole frames)
                detected = -(-ends[0] // FRAME_SAMPLES) * FRAME_SAMPLES
                turn.endpointing_ms = (detected - end) / SAMPLE_RATE * 1000
                turn.endpointing_exact = True

    def attach(self, session: AgentSession) -> None:
        """`start_call`'s `before_start`: the room's audio replaced by the caller and the loudspeaker."""
        session.input.audio = self.caller
        session.output.audio = self.speaker

        def on_user_state(event: UserStateChangedEvent) -> None:
            # emitted as the VAD reports the end of speech (the event's own `created_at` is back-dated)
            if event.old_state == "speaking" and event.new_state != "speaking":
                self.vad_detections.append(time.time())

        session.on("user_state_changed", on_user_state)


async def run_call(
    env: Environment,
    script: CallScript,
    *,
    latencies: Latencies = DEFAULT_LATENCIES,
    tuning: Tuning = DEFAULT_TUNING,
    ctx: JobContext | None = None,
) -> CallRecord:
    """One call through `calls.bootstrap.start_call`. Without `ctx` it runs in a fake job context of its own
    (in-process); a job process passes its `JobContext`, whose metadata must be a grant from `env.metadata`.
    A call that fails or stalls returns a record with `error` set."""
    if ctx is None:
        with fake_job_context(job_metadata=env.metadata(script), job_id=f"sim-{uuid.uuid4().hex[:12]}") as own:
            return await _run_call(env, script, latencies, tuning, own)
    return await _run_call(env, script, latencies, tuning, ctx)


async def _run_call(
    env: Environment, script: CallScript, latencies: Latencies, tuning: Tuning, ctx: JobContext
) -> CallRecord:
    doubles = _Doubles(env, script, latencies, tuning)
    services = CallServices(settings=env.settings, catalog=env.catalog, session_kwargs=doubles.session_kwargs)
    record = CallRecord(
        label=tuning.label,
        agent_id=str(script.agent_id or script.team_id),
        entered_at=time.time(),
        tts_ttfb_ms=latencies.tts_ttfb_s * 1000,
    )
    call: Call | None = None
    try:
        call = await start_call(ctx, services, room=None, before_start=doubles.attach)
        record.started_at = time.time()
        await _converse(env, doubles, script, record)
        record.end_reason = "completed"
    except Exception as exc:  # a failed call is a result the benchmark counts, not a crash
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        doubles.caller.close()
        if call is not None:
            with contextlib.suppress(Exception):
                await call.session.aclose()
            record.transcript = [
                (m.role, m.text_content or "")
                for m in call.session.history.messages()
                if m.role in ("user", "assistant")
            ]
        with contextlib.suppress(Exception):
            await doubles.speaker.aclose()
        if doubles.built is not None:
            await doubles.built.aclose()
    record.ended_at = time.time()
    with contextlib.suppress(Exception):  # without a replay the offline table stands
        await doubles.exact_waits(record)
    _fill_measured(doubles, record)
    record.segments = [
        {
            "first_frame_at": s.first_frame_at,
            "finished_at": s.finished_at,
            "interrupted": s.interrupted,
            "pushed_s": s.pushed_duration,
            "played_s": s.playback_position,
        }
        for s in doubles.speaker.segments
    ]
    return record


async def _converse(env: Environment, doubles: _Doubles, script: CallScript, record: CallRecord) -> None:
    caller, speaker, latencies = doubles.caller, doubles.speaker, doubles.latencies
    config = doubles.pipeline
    assert config is not None
    if config.first_speaking.first_speaker == "agent":
        greeting = await speaker.wait_for_segment(0, timeout=STEP_TIMEOUT_S)
        record.greeting_first_frame_at = greeting.first_frame_at
    for index, turn in enumerate(script.turns):
        heard = len(speaker.segments)
        if heard and turn.barge_in:
            await asyncio.sleep(script.barge_in_after_s)
        elif heard:
            await speaker.wait_for_playout_of(heard - 1, timeout=STEP_TIMEOUT_S)
            await asyncio.sleep(script.think_s)
        else:
            await asyncio.sleep(script.lead_in_s)
        waits = await env.vad_waits(turn.says, doubles.tuning, config)
        await caller.wait_idle(timeout=STEP_TIMEOUT_S)
        # the clip's first sample in the VAD's own stream decides how its windows fall on the speech
        clip = env.clip(turn.says)
        clip_start = caller.speak(clip)
        phase = (clip_start - doubles.vad_offset) % VAD_PERIOD
        mark = await caller.wait_for_speech_end(index, timeout=STEP_TIMEOUT_S)
        assert mark.ended_at is not None
        ended = mark.ended_at
        turn_record = TurnRecord(
            index=index,
            says=turn.says,
            speech_ended_at=ended,
            vad_phase=phase,
            clip_start=clip_start,
            clip_end=clip_start + -(-len(clip.pcm) // FRAME_SAMPLES) * FRAME_SAMPLES,
            endpointing_ms=waits[phase] * 1000 if phase in waits else None,
            configured_stt_ms=latencies.stt_s * 1000,
            configured_llm_ttft_ms=latencies.llm_ttft_s * 1000,
            configured_tts_ttfb_ms=latencies.tts_ttfb_s * 1000,
            stt_streaming=isinstance(doubles.stt, StreamingFakeSTT),
            # livekit's default for the stock pipeline; the config's own for the worker's
            preemptive_generation=doubles.tuning.stock or config.preemptive_generation,
            configured_endpointing_ms=config.endpointing_min_delay_ms,
        )
        record.turns.append(turn_record)
        # the reply is the first segment that starts after the caller's last word
        reply_index = heard
        while (reply := await speaker.wait_for_segment(reply_index, timeout=STEP_TIMEOUT_S)).first_frame_at <= ended:
            reply_index += 1
        turn_record.first_audio_at = reply.first_frame_at
        if heard and turn.barge_in:
            previous = await speaker.wait_for_playout_of(heard - 1, timeout=STEP_TIMEOUT_S)
            turn_record.interrupted_reply = previous.interrupted
    if script.turns and speaker.segments:
        # the last reply enters the history only once it has played out
        await speaker.wait_for_playout_of(len(speaker.segments) - 1, timeout=STEP_TIMEOUT_S)


def _latest(items: Sequence[Any], key: Callable[[Any], float | None], after: float, before: float) -> Any | None:
    eligible = [i for i in items if (k := key(i)) is not None and after <= k <= before]
    return max(eligible, key=key, default=None)  # type: ignore[arg-type,return-value]  # key is not None on eligible


def _fill_measured(doubles: _Doubles, record: CallRecord) -> None:
    """What the doubles measured on each turn's critical path: the last STT answer, reply stream's first
    token and TTS first byte before the turn's first audio."""
    replies = [c for c in doubles.llm.calls if not _is_router_request(c.tool_names)]
    routers = [c for c in doubles.llm.calls if _is_router_request(c.tool_names)]
    for turn in record.turns:
        if turn.first_audio_at is None:
            continue
        ended, audio_at = turn.speech_ended_at, turn.first_audio_at
        detected = next((t for t in doubles.vad_detections if t >= ended), None)
        if detected is not None:
            turn.vad_detected_ms = (detected - ended) * 1000
        if (stt := _latest(doubles.stt.requests, lambda r: r.responded_at, ended, audio_at)) is not None:
            turn.stt_ms = (stt.responded_at - stt.requested_at) * 1000
        if (reply := _latest(replies, lambda c: c.first_chunk_at, ended, audio_at)) is not None:
            turn.llm_ttft_ms = (reply.first_chunk_at - reply.started_at) * 1000
        if (router := _latest(routers, lambda c: c.first_chunk_at, ended, audio_at)) is not None:
            turn.router_ms = (router.first_chunk_at - router.started_at) * 1000
        if (synth := _latest(doubles.tts.requests, lambda r: r.first_byte_at, ended, audio_at)) is not None:
            opened = getattr(synth, "first_text_at", None) or getattr(synth, "requested_at", None)
            turn.tts_ttfb_ms = (synth.first_byte_at - opened) * 1000


# -- summaries -----------------------------------------------------------------------------------------------


def percentile(values: Sequence[float | None], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without values."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    return data[max(math.ceil(q / 100 * len(data)) - 1, 0)]
