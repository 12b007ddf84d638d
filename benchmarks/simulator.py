"""The call simulator: whole voice calls through the real worker bootstrap, without a LiveKit server.

One simulated call is what a job process does for a real one, minus the room: real signed dispatch metadata
in a fake job context, `worker.call.start_call` (verify, admit against the file catalog, seed variables,
build the session from the pipeline config, greet), the real `AgentSession` with the real Silero VAD and
turn handling (`pipelines.vad.SharedVAD`, `pipelines.turn_handling`), the real supervisor. Only the
providers are doubles with fixed latencies (tests/doubles: the STT answers `stt_s` after the VAD's end of
speech, the LLM's first token comes `llm_ttft_s` after the request and one word every `llm_token_s`, the
TTS's first audio comes `tts_ttfb_s` after its first text), and the room is replaced by a scripted caller
(espeak-ng speech fed as real-time 10 ms frames) and a capturing loudspeaker.

The caller is reactive, as a person is: each utterance starts `think_s` after the agent's previous reply
has finished playing (or, for a barge-in turn, `barge_in_after_s` after it started).

Per call the simulator records when the call was dispatched and when the greeting's first frame played,
and per turn the end of the caller's speech and the agent's first audio, split three ways:
- endpointing wait: end of speech -> the VAD's end-of-speech event (the silence the config asks for, plus
  Silero's own lag in letting go);
- provider time: STT + LLM time to first token + TTS time to first byte, as the doubles measured them;
- overhead: the rest; what the worker and livekit-agents add.
`TurnRecord.overhead_nominal_ms` is the same turn judged against the configured figures only
(first audio - end of speech - (endpointing delay + STT + TTFT + TTFB)), the formula of the stock baseline
in /work/shared/notes/baseline-stock-livekit-agents.md, so both can be compared side by side.

`StreamingFakeTTS` lives here rather than in tests/doubles because only the simulator needs it: it is the
streaming counterpart of `FakeTTS` (audio `ttfb_s` after the first *word*, as Deepgram's streaming TTS
behaves), which is what the stock baseline measured with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from livekit.agents import AgentSession, JobContext, llm, tts
from livekit.agents.testing import fake_job_context
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice.events import ConversationItemAddedEvent, UserStateChangedEvent
from livekit.agents.voice.turn import TurnHandlingOptions
from livekit.plugins import silero

from catalog.loader import CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from pipelines.builder import build_pipeline
from pipelines.vad import SharedVAD
from tests.doubles.audio_io import CapturingAudioOutput, ScriptedAudioInput
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.doubles.fake_speech import FakeSTT, FakeTTS
from tests.doubles.wav_fixtures import Clip, espeak_available, synthesize_speech
from worker.call import Call, CallServices, start_call
from worker.dispatch import DispatchRequest, mint_dispatch_metadata
from worker.settings import EXAMPLE_CATALOG, Settings

__all__ = [
    "SALES",
    "SUPPORT",
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
    "run_calls",
]

SALES = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02")
SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
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
    `text_transforms`: livekit's default (`filter_markdown`, `filter_emoji`), or `"none"` (the text goes to
    the TTS as the LLM streams it; the markdown filter holds each token until the next one arrives).
    `tts`: `"streaming"` (`StreamingFakeTTS`, like Deepgram) or `"sentence"` (`FakeTTS` behind livekit's
    sentence tokenizer, like OpenAI's TTS)."""

    stock: bool = False
    text_transforms: Literal["default", "none"] = "default"
    tts: Literal["streaming", "sentence"] = "streaming"
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
        return ", ".join(parts)


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
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True), sample_rate=sample_rate, num_channels=1
        )
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


# -- records -----------------------------------------------------------------------------------------------


@dataclass
class TurnRecord:
    """One caller turn. Times are `time.time()` seconds; durations are milliseconds."""

    index: int
    says: str
    speech_ended_at: float
    first_audio_at: float | None = None
    vad_end_at: float | None = None
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

    @property
    def endpointing_ms(self) -> float | None:
        return None if self.vad_end_at is None else (self.vad_end_at - self.speech_ended_at) * 1000

    @property
    def provider_ms(self) -> float | None:
        parts = (self.stt_ms, self.llm_ttft_ms, self.tts_ttfb_ms)
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]

    @property
    def overhead_ms(self) -> float | None:
        total, wait, provider = self.total_ms, self.endpointing_ms, self.provider_ms
        if total is None or wait is None or provider is None:
            return None
        return total - wait - provider

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "total_ms": self.total_ms,
            "endpointing_ms": self.endpointing_ms,
            "provider_ms": self.provider_ms,
            "overhead_ms": self.overhead_ms,
        }


@dataclass
class CallRecord:
    label: str
    agent_id: str
    dispatched_at: float
    entered_at: float
    started_at: float | None = None
    """`start_call` returned (session started, greeting scheduled)."""
    greeting_first_frame_at: float | None = None
    greeting_tts_ttfb_ms: float | None = None
    nominal_budget_ms: float = 0.0
    """Endpointing delay + STT + LLM TTFT + TTS TTFB, as configured: what a turn costs with zero overhead."""
    turns: list[TurnRecord] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)
    """(role, text) of the session's history, in order, greeting first."""
    segments: list[dict[str, Any]] = field(default_factory=list)
    end_reason: str | None = None
    error: str | None = None

    @property
    def call_start_ms(self) -> float | None:
        """Entrypoint entered -> first greeting frame, minus the TTS double's configured latency."""
        if self.greeting_first_frame_at is None:
            return None
        return (self.greeting_first_frame_at - self.entered_at) * 1000 - self._tts_nominal_ms

    @property
    def dispatch_to_greeting_ms(self) -> float | None:
        if self.greeting_first_frame_at is None:
            return None
        return (self.greeting_first_frame_at - self.dispatched_at) * 1000

    _tts_nominal_ms: float = 0.0

    def overhead_nominal_ms(self, turn: TurnRecord) -> float | None:
        total = turn.total_ms
        return None if total is None else total - self.nominal_budget_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "agent_id": self.agent_id,
            "dispatched_at": self.dispatched_at,
            "entered_at": self.entered_at,
            "started_at": self.started_at,
            "greeting_first_frame_at": self.greeting_first_frame_at,
            "call_start_ms": self.call_start_ms,
            "dispatch_to_greeting_ms": self.dispatch_to_greeting_ms,
            "nominal_budget_ms": self.nominal_budget_ms,
            "turns": [
                {**t.as_dict(), "overhead_nominal_ms": self.overhead_nominal_ms(t)} for t in self.turns
            ],
            "transcript": [list(x) for x in self.transcript],
            "segments": self.segments,
            "end_reason": self.end_reason,
            "error": self.error,
        }


# -- the process-wide part (what a job process's setup function holds) -------------------------------------


class Environment:
    """What one process holds for all its simulated calls: settings, the file catalog, the VAD model and the
    caller's speech. `Environment.create()` is the simulator's `setup_process`."""

    def __init__(self, settings: Settings, catalog: CatalogStore, vad: SharedVAD, speech_cache: Path) -> None:
        self.settings = settings
        self.catalog = catalog
        self.vad = vad
        self.speech_cache = speech_cache
        self._clips: dict[str, Clip] = {}
        self._stock_vad: silero.VAD | None = None

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

    def clip(self, text: str) -> Clip:
        if text not in self._clips:
            self._clips[text] = synthesize_speech(text, cache_dir=self.speech_cache)
        return self._clips[text]

    def prepare(self, script: CallScript) -> None:
        """Synthesise the script's speech now, so no call waits for espeak-ng."""
        for turn in script.turns:
            self.clip(turn.says)

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


def _is_router_request(tools: list[llm.Tool]) -> bool:
    return len(tools) == 1 and getattr(tools[0], "id", "").startswith(ROUTER_TOOL_PREFIX)


def _router_choice(tool: llm.Tool) -> str:
    """The first option the router offers (a real name, so the supervisor applies a procedure)."""
    info = getattr(tool, "info", None)
    schema = getattr(info, "raw_schema", {}) or {}
    enum = schema.get("parameters", {}).get("properties", {}).get("name", {}).get("enum") or ["none"]
    return str(enum[0])


class _Doubles:
    """One call's providers and audio, and the session events the records are made from."""

    def __init__(self, env: Environment, script: CallScript, latencies: Latencies, tuning: Tuning) -> None:
        self.script = script
        self.latencies = latencies
        self.tuning = tuning
        self.caller = ScriptedAudioInput()
        self.speaker = CapturingAudioOutput()
        self.stt = FakeSTT(self._transcript, latency_s=latencies.stt_s)
        self.llm = FakeLLM(
            self._reply, default_ttft_s=latencies.llm_ttft_s, default_token_interval_s=latencies.llm_token_s
        )
        self.tts: StreamingFakeTTS | FakeTTS = (
            StreamingFakeTTS(ttfb_s=latencies.tts_ttfb_s)
            if tuning.tts == "streaming"
            else FakeTTS(ttfb_s=latencies.tts_ttfb_s)
        )
        self.replies = {normalize(t.says): t.reply for t in script.turns}
        self.vad_ends: list[float] = []
        self.env = env
        self.pipeline: VoicePipelineConfig | None = None

    def _transcript(self, _audio: Any) -> str:
        # the utterance the caller is in (or just finished): robust to the VAD's segmentation
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
        self.pipeline = config
        if self.tuning.stock:
            kwargs: dict[str, Any] = {
                "vad": self.env.stock_vad,
                "turn_handling": TurnHandlingOptions(
                    turn_detection="vad", endpointing={"min_delay": config.endpointing_min_delay_ms / 1000}
                ),
            }
        else:
            built = build_pipeline(config, self.env.settings, vad=self.env.vad)
            kwargs = built.session_kwargs()
            # the real provider objects are never used: close their clients now
            self._built = built
        kwargs.update(stt=self.stt, llm=self.llm, tts=self.tts, session_close_transcript_timeout=0.1)
        if self.tuning.text_transforms == "none":
            kwargs["tts_text_transforms"] = None
        if not self.tuning.aec_warmup:
            kwargs["aec_warmup_duration"] = None
        return kwargs

    def attach(self, session: AgentSession) -> None:
        session.input.audio = self.caller
        session.output.audio = self.speaker

        def on_user_state(event: UserStateChangedEvent) -> None:
            if event.old_state == "speaking" and event.new_state != "speaking":
                self.vad_ends.append(event.created_at)

        session.on("user_state_changed", on_user_state)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w']+", " ", text.lower()).split())


async def _wait(predicate: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"simulated call stalled: {what}")
        await asyncio.sleep(0.005)


async def run_call(
    env: Environment,
    script: CallScript,
    *,
    latencies: Latencies = Latencies(),
    tuning: Tuning = Tuning(),
    ctx: JobContext | None = None,
    dispatched_at: float | None = None,
) -> CallRecord:
    """One call through `start_call`. Without `ctx` it runs in a fake job context of its own (in-process);
    a job process passes its real `JobContext` (whose metadata must be a grant from `env.metadata`)."""
    if ctx is None:
        with fake_job_context(job_metadata=env.metadata(script), job_id=f"sim-{uuid.uuid4().hex[:12]}") as own:
            return await _run_call(env, script, latencies, tuning, own, dispatched_at)
    return await _run_call(env, script, latencies, tuning, ctx, dispatched_at)


async def _run_call(
    env: Environment,
    script: CallScript,
    latencies: Latencies,
    tuning: Tuning,
    ctx: JobContext,
    dispatched_at: float | None,
) -> CallRecord:
    doubles = _Doubles(env, script, latencies, tuning)
    services = CallServices(settings=env.settings, catalog=env.catalog, session_kwargs=doubles.session_kwargs)
    entered = time.time()
    record = CallRecord(
        label=tuning.label,
        agent_id=str(script.agent_id or script.team_id),
        dispatched_at=dispatched_at or entered,
        entered_at=entered,
    )
    record._tts_nominal_ms = latencies.tts_ttfb_s * 1000
    call: Call | None = None
    try:
        call = await start_call(ctx, services, room=None, before_start=doubles.attach)
        record.started_at = time.time()
        assert doubles.pipeline is not None
        record.nominal_budget_ms = (
            doubles.pipeline.endpointing_min_delay_ms
            + (latencies.stt_s + latencies.llm_ttft_s + latencies.tts_ttfb_s) * 1000
        )
        await _converse(doubles, script, record)
        record.end_reason = "completed"
    except Exception as exc:  # noqa: BLE001 - a failed call is a result (the benchmark counts it), not a crash
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        doubles.caller.close()
        if call is not None:
            with contextlib.suppress(Exception):
                await call.session.aclose()
            record.transcript = [
                (m.role, m.text_content or "") for m in call.session.history.messages() if m.role in ("user", "assistant")
            ]
        with contextlib.suppress(Exception):
            await doubles.speaker.aclose()
        built = getattr(doubles, "_built", None)
        if built is not None:
            await built.aclose()
    _fill_provider_times(doubles, record)
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


async def _converse(doubles: _Doubles, script: CallScript, record: CallRecord) -> None:
    caller, speaker = doubles.caller, doubles.speaker
    assert doubles.pipeline is not None
    if doubles.pipeline.first_speaking.first_speaker == "agent":
        greeting = await speaker.wait_for_segment(0, timeout=STEP_TIMEOUT_S)
        record.greeting_first_frame_at = greeting.first_frame_at
    for index, turn in enumerate(script.turns):
        heard = len(speaker.segments)
        if heard:
            if turn.barge_in:
                await asyncio.sleep(script.barge_in_after_s)
            else:
                await speaker.wait_for_playout_of(heard - 1, timeout=STEP_TIMEOUT_S)
                await asyncio.sleep(script.think_s)
        else:
            await asyncio.sleep(script.lead_in_s)
        caller.enqueue(doubles.env.clip(turn.says))
        mark = await caller.wait_for_speech_end(index, timeout=STEP_TIMEOUT_S)
        assert mark.ended_at is not None
        turn_record = TurnRecord(index=index, says=turn.says, speech_ended_at=mark.ended_at)
        record.turns.append(turn_record)
        # the reply is the first segment that starts after the caller's words
        await _wait(
            lambda: any(s.first_frame_at > mark.ended_at for s in speaker.segments[heard:]),  # type: ignore[operator]
            f"no reply to turn {index}",
        )
        reply = next(s for s in speaker.segments[heard:] if s.first_frame_at > mark.ended_at)  # type: ignore[operator]
        turn_record.first_audio_at = reply.first_frame_at
        if heard and turn.barge_in:
            previous = speaker.segments[heard - 1]
            await _wait(lambda: previous.finished_at is not None, "interrupted reply never finished")
            turn_record.interrupted_reply = previous.interrupted
    if speaker.segments:
        await speaker.wait_for_playout_of(len(speaker.segments) - 1, timeout=STEP_TIMEOUT_S)


def _latest(items: Sequence[Any], key: Callable[[Any], float | None], before: float) -> Any | None:
    eligible = [i for i in items if (k := key(i)) is not None and k <= before]
    return max(eligible, key=key, default=None)


def _fill_provider_times(doubles: _Doubles, record: CallRecord) -> None:
    """What the doubles measured on each turn's critical path: the last STT answer, the last reply stream's
    first token and the last TTS first byte before the turn's first audio."""
    if doubles.tts.requests and record.greeting_first_frame_at is not None:
        first = doubles.tts.requests[0]
        start = getattr(first, "first_text_at", None) or getattr(first, "requested_at", None)
        if first.first_byte_at is not None and start is not None:
            record.greeting_tts_ttfb_ms = (first.first_byte_at - start) * 1000
    for turn in record.turns:
        if turn.first_audio_at is None:
            continue
        audio_at = turn.first_audio_at
        turn.vad_end_at = next((t for t in doubles.vad_ends if t >= turn.speech_ended_at), None)
        stt = _latest(doubles.stt.requests, lambda r: r.responded_at, audio_at)
        if stt is not None and stt.responded_at >= turn.speech_ended_at:
            turn.stt_ms = (stt.responded_at - stt.requested_at) * 1000
        replies = [c for c in doubles.llm.calls if not c.tool_names or not c.tool_names[0].startswith(ROUTER_TOOL_PREFIX)]
        reply = _latest(replies, lambda c: c.first_chunk_at, audio_at)
        if reply is not None and reply.first_chunk_at >= turn.speech_ended_at:
            turn.llm_ttft_ms = (reply.first_chunk_at - reply.started_at) * 1000
        routers = [
            c
            for c in doubles.llm.calls
            if c.tool_names and c.tool_names[0].startswith(ROUTER_TOOL_PREFIX) and c.started_at >= turn.speech_ended_at
        ]
        router = _latest(routers, lambda c: c.first_chunk_at, audio_at)
        if router is not None:
            turn.router_ms = (router.first_chunk_at - router.started_at) * 1000
        synth = _latest(doubles.tts.requests, lambda r: r.first_byte_at, audio_at)
        if synth is not None and synth.first_byte_at >= turn.speech_ended_at:
            start = getattr(synth, "first_text_at", None) or getattr(synth, "requested_at", None)
            turn.tts_ttfb_ms = (synth.first_byte_at - start) * 1000


# -- many calls --------------------------------------------------------------------------------------------


async def run_calls(
    env: Environment,
    script: CallScript,
    count: int,
    *,
    latencies: Latencies = Latencies(),
    tuning: Tuning = Tuning(),
    stagger_s: float = 0.0,
) -> list[CallRecord]:
    """`count` concurrent calls in this event loop (the in-process executor), started `stagger_s` apart."""
    env.prepare(script)

    async def one(i: int) -> CallRecord:
        if stagger_s:
            await asyncio.sleep(i * stagger_s)
        return await run_call(env, script, latencies=latencies, tuning=tuning)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def freeze_after_setup() -> None:
    """`gc.freeze()` once the process has imported and loaded everything: the ~150k long-lived objects
    stop being traversed by every collection (the GC pauses the stock baseline saw past 15 calls)."""
    gc.collect()
    gc.freeze()


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), None for no values."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    return float(np.percentile(np.array(data), q, method="nearest" if len(data) < 20 else "linear"))


def median(values: Sequence[float]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def with_latencies(latencies: Latencies, **changes: float) -> Latencies:
    return replace(latencies, **changes)


def speech_available() -> bool:
    return espeak_available()
