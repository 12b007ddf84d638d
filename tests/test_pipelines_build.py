"""Each example catalog config builds into the livekit-agents objects and options it says."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from livekit.agents import AgentSession, inference, llm, stt, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
from livekit.plugins import deepgram, openai

from catalog.loader import load_catalog
from catalog.pipeline_config import ModelChainEntry, STTEntry, TTSEntry, VoicePipelineConfig
from contract.settings import EXAMPLE_CATALOG
from pipelines.builder import (
    BuiltPipeline,
    PipelineError,
    build_llm,
    build_pipeline,
    session_connect_options,
)
from pipelines.providers import UNUSED_KEY, OpenAIChatLLM
from pipelines.turn_handling import TURN_DETECTOR_MIN_SILENCE_S
from pipelines.vad import SharedVAD
from worker.settings import Settings

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
SALES = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02")
TEAM = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")


@pytest.fixture(scope="module")
def shared_vad() -> SharedVAD:
    return SharedVAD.load()


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for env in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "OPENAI_COMPATIBLE_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    return Settings(_env_file=None, OPENAI_API_KEY="sk-test-openai", DEEPGRAM_API_KEY="dg-test-key")


@pytest.fixture(scope="module")
def catalog():
    loaded = load_catalog(Path(EXAMPLE_CATALOG))
    assert loaded.problems == []
    return loaded


@pytest.fixture
async def built(catalog, settings, shared_vad):
    pipelines: list[BuiltPipeline] = []

    def build(config: VoicePipelineConfig) -> BuiltPipeline:
        pipeline = build_pipeline(config, settings, vad=shared_vad)
        pipelines.append(pipeline)
        return pipeline

    yield build
    for pipeline in pipelines:
        await pipeline.aclose()


def _base_url(model: openai.LLM) -> str:
    return str(model._client.base_url)


def _llm_on_localhost(config: VoicePipelineConfig) -> VoicePipelineConfig:
    """AgentSession prewarms its LLM with a request; keep that request on this machine."""
    chain = tuple(e.model_copy(update={"base_url": "http://127.0.0.1:9/v1"}) for e in config.model_chain)
    return config.model_copy(update={"model_chain": chain})


async def test_support_agent_builds_fallback_chains_in_order(catalog, built) -> None:
    pipeline = built(catalog.agents[SUPPORT].active_revision.pipeline)

    assert isinstance(pipeline.stt, stt.FallbackAdapter)
    primary_stt, second_stt = pipeline.stt._stt_instances
    assert isinstance(primary_stt, deepgram.STT)
    assert (primary_stt.model, primary_stt._opts.language) == ("nova-3", "en")
    # OpenAI's transcription is not streaming: the adapter wraps it with the call's VAD
    assert isinstance(second_stt, stt.StreamAdapter)
    assert isinstance(second_stt.wrapped_stt, openai.STT)
    assert second_stt.wrapped_stt._opts.model == "gpt-4o-mini-transcribe"
    assert second_stt._vad is pipeline.vad
    assert pipeline.stt._attempt_timeout == 8.0
    assert pipeline.stt._max_retry_per_stt == 0

    assert isinstance(pipeline.llm, llm.FallbackAdapter)
    models = pipeline.llm._llm_instances
    assert [type(m) for m in models] == [OpenAIChatLLM, OpenAIChatLLM]
    assert all(isinstance(m, openai.LLM) for m in models)
    assert [m.model for m in models] == ["gpt-4.1-mini", "gpt-4o-mini"]
    assert [m._opts.temperature for m in models] == [0.4, 0.4]
    assert [m._opts.max_completion_tokens for m in models] == [300, 300]
    assert [m.request_timeout_s for m in models] == [4.0, 4.0]
    assert all(_base_url(m).startswith("https://api.openai.com/") for m in models)
    assert pipeline.llm._attempt_timeout == 4.0
    assert pipeline.llm._max_retry_per_llm == 0
    assert pipeline.llm._retry_interval == 0.5

    assert isinstance(pipeline.tts, tts.FallbackAdapter)
    first_tts, second_tts = pipeline.tts._tts_instances
    assert isinstance(first_tts, openai.TTS)
    assert (first_tts._opts.model, first_tts._opts.voice, first_tts._opts.speed) == ("gpt-4o-mini-tts", "alloy", 1.0)
    assert isinstance(second_tts, deepgram.TTS)
    assert (second_tts._opts.model, second_tts._opts.speed) == ("aura-2-thalia-en", None)
    assert pipeline.tts._max_retry_per_tts == 0
    # tts.FallbackAdapter takes its timeout from the session's tts_conn_options
    assert pipeline.conn_options.tts_conn_options.timeout == 8.0
    assert pipeline.conn_options.llm_conn_options.timeout == 4.0
    assert pipeline.conn_options.stt_conn_options.timeout == 8.0

    assert isinstance(pipeline.vad, inference.VAD)
    opts = pipeline.vad._opts
    assert opts.activation_threshold == 0.6
    assert opts.deactivation_threshold == pytest.approx(0.45)
    assert opts.min_speech_duration == 0.2
    # stop_secs 0.4 and endpointing 400 ms agree
    assert opts.min_silence_duration == 0.4

    assert pipeline.turn_handling == {
        "turn_detection": "vad",
        "endpointing": {"mode": "fixed", "min_delay": 0.4, "max_delay": 3.0},
        "interruption": {
            "enabled": True,
            "mode": "vad",
            "min_words": 0,
            "min_duration": 0.5,
            "false_interruption_timeout": 2.0,
        },
        "preemptive_generation": {"enabled": True},
    }
    # silence timeout 15 s: the session's "away" state follows it
    assert pipeline.user_away_timeout == 15.0


async def test_sales_agent_uses_self_hosted_llm_with_openai_fallback(catalog, built, settings) -> None:
    pipeline = built(catalog.agents[SALES].active_revision.pipeline)

    assert isinstance(pipeline.stt, deepgram.STT)
    assert pipeline.stt.model == "nova-3"

    assert isinstance(pipeline.llm, llm.FallbackAdapter)
    local, cloud = pipeline.llm._llm_instances
    assert local.model == "llama3.2:3b"
    assert _base_url(local) == "http://localhost:11434/v1/"
    assert local._client.api_key == UNUSED_KEY  # no OPENAI_COMPATIBLE_API_KEY configured
    assert local._opts.temperature == 0.6
    # self-hosted servers get the classic max_tokens field
    assert local._opts.extra_body == {"max_tokens": 250}
    assert local.request_timeout_s == 3.0
    assert cloud.model == "gpt-4.1-mini"
    assert _base_url(cloud).startswith("https://api.openai.com/")
    assert cloud._client.api_key == "sk-test-openai"
    assert cloud._opts.max_completion_tokens == 250
    assert cloud.request_timeout_s is None  # the adapter's attempt timeout applies
    assert pipeline.llm._attempt_timeout == 5.0

    assert isinstance(pipeline.tts, deepgram.TTS)
    assert pipeline.tts._opts.model == "aura-2-andromeda-en"

    assert pipeline.vad._opts.activation_threshold == 0.7
    assert pipeline.vad._opts.min_silence_duration == 0.5
    assert pipeline.turn_handling["endpointing"] == {"mode": "fixed", "min_delay": 0.5, "max_delay": 3.0}
    assert pipeline.user_away_timeout == 20.0


async def test_team_pipeline_single_entries_are_plugin_objects(catalog, built) -> None:
    pipeline = built(catalog.teams[TEAM].pipeline)

    assert isinstance(pipeline.stt, deepgram.STT)
    assert isinstance(pipeline.llm, OpenAIChatLLM)
    assert pipeline.llm.model == "gpt-4.1-mini"
    assert pipeline.llm._opts.temperature == 0.4
    assert pipeline.llm._opts.max_completion_tokens == 300
    assert isinstance(pipeline.tts, openai.TTS)
    assert pipeline.tts._opts.voice == "sage"
    # stop_secs defaults to 0.5 s but the team ends turns after 450 ms: the VAD must not hold them longer
    assert pipeline.vad._opts.min_silence_duration == 0.45
    assert pipeline.turn_handling["endpointing"]["min_delay"] == 0.45
    # one provider per kind: timeouts from the config, livekit's own retry count
    assert pipeline.conn_options.llm_conn_options.timeout == 5.0
    assert pipeline.conn_options.llm_conn_options.max_retry == DEFAULT_API_CONNECT_OPTIONS.max_retry
    assert pipeline.user_away_timeout is None


async def test_session_kwargs_build_an_agent_session(catalog, built) -> None:
    pipeline = built(_llm_on_localhost(catalog.agents[SUPPORT].active_revision.pipeline))
    kwargs = pipeline.session_kwargs()
    assert set(kwargs) == {
        "stt",
        "llm",
        "tts",
        "vad",
        "turn_handling",
        "conn_options",
        "user_away_timeout",
        "min_consecutive_speech_delay",
    }

    session = AgentSession(**kwargs)
    assert session.stt is pipeline.stt
    assert session.llm is pipeline.llm
    assert session.tts is pipeline.tts
    assert session.vad is pipeline.vad
    handling = session.options.turn_handling
    assert handling["turn_detection"] == "vad"
    assert handling["endpointing"]["min_delay"] == 0.4
    assert handling["interruption"]["min_duration"] == 0.5
    assert handling["preemptive_generation"]["enabled"] is True
    assert session.options.user_away_timeout == 15.0
    assert session.conn_options.llm_conn_options.timeout == 4.0


async def test_each_call_gets_its_own_vad_over_the_native_model(catalog, built) -> None:
    config = catalog.agents[SUPPORT].active_revision.pipeline
    first, second = built(config), built(config)
    assert isinstance(first.vad, inference.VAD) and first.vad.model == "silero"
    assert first.vad is not second.vad
    # one call's VAD options are its own
    first.vad.update_options(min_silence_duration=0.9)
    assert first.vad.min_silence_duration == 0.9
    assert second.vad.min_silence_duration == 0.4


async def test_turn_detector_mode_uses_the_offline_model(built) -> None:
    config = VoicePipelineConfig(
        turn_detection="turn_detector", endpointing_min_delay_ms=150, endpointing_max_delay_ms=4000
    )
    pipeline = built(_llm_on_localhost(config))
    detector = pipeline.turn_handling["turn_detection"]
    assert isinstance(detector, inference.TurnDetector)
    assert detector.model == "turn-detector-v1-mini"
    assert pipeline.turn_handling["endpointing"] == {"mode": "fixed", "min_delay": 0.15, "max_delay": 4.0}
    # livekit refuses a VAD below the detector's own minimum silence
    assert pipeline.vad._opts.min_silence_duration == TURN_DETECTOR_MIN_SILENCE_S
    AgentSession(**pipeline.session_kwargs())


async def test_stt_turn_detection_interruptions_and_preemption_follow_the_config(built) -> None:
    config = VoicePipelineConfig(
        turn_detection="stt",
        interruptions_enabled=False,
        interruption_min_words=3,
        interruption_min_duration_ms=800,
        preemptive_generation=False,
        local_vad_params={"confidence": 0.5, "start_secs": 0.1, "stop_secs": 0.3},
        endpointing_min_delay_ms=700,
    )
    pipeline = built(config)
    assert pipeline.turn_handling["turn_detection"] == "stt"
    assert pipeline.turn_handling["interruption"] == {
        "enabled": False,
        "mode": "vad",
        "min_words": 3,
        "min_duration": 0.8,
        "false_interruption_timeout": 2.0,
    }
    assert pipeline.turn_handling["preemptive_generation"] == {"enabled": False}
    # stop_secs shorter than the delay stays as configured
    assert pipeline.vad._opts.min_silence_duration == 0.3
    assert pipeline.vad._opts.min_speech_duration == 0.1


async def test_openai_compatible_everything_with_configured_key(built, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY", raising=False)
    settings = Settings(_env_file=None, OPENAI_COMPATIBLE_API_KEY="local-key")
    config = VoicePipelineConfig(
        language="de",
        stt_chain=[STTEntry(provider="openai_compatible", model="whisper-large-v3", base_url="http://stt:8000/v1")],
        model_chain=[
            ModelChainEntry(
                provider="openai_compatible",
                model="qwen2.5",
                base_url="http://vllm:8000/v1",
                config={"temperature": 0.2, "top_p": 0.9},
            )
        ],
        tts_chain=[
            TTSEntry(provider="openai_compatible", model="kokoro", voice_id="af_bella", base_url="http://tts/v1")
        ],
        tts_speed=1.25,
    )
    pipeline = build_pipeline(config, settings, vad=SharedVAD.load())
    try:
        assert isinstance(pipeline.stt, openai.STT)
        assert pipeline.stt._opts.model == "whisper-large-v3"
        assert pipeline.stt._opts.languages == ["de"]
        assert pipeline.llm._client.api_key == "local-key"
        assert (pipeline.llm._opts.temperature, pipeline.llm._opts.top_p) == (0.2, 0.9)
        assert _base_url(pipeline.llm) == "http://vllm:8000/v1/"
        assert (pipeline.tts._opts.model, pipeline.tts._opts.voice, pipeline.tts._opts.speed) == (
            "kokoro",
            "af_bella",
            1.25,
        )
        assert str(pipeline.tts._client.base_url) == "http://tts/v1/"
    finally:
        await pipeline.aclose()


def test_build_refuses_a_config_with_problems(monkeypatch, shared_vad) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    settings = Settings(_env_file=None, OPENAI_API_KEY="sk-test-openai")
    with pytest.raises(PipelineError) as err:
        build_pipeline(VoicePipelineConfig(), settings, vad=shared_vad)
    assert [(p.field, p.reason) for p in err.value.problems] == [
        ("pipeline.stt_chain[0].provider", "provider 'deepgram' needs an API key: set DEEPGRAM_API_KEY")
    ]


def test_team_calls_take_the_team_pipeline_agent_calls_the_revision(catalog, settings) -> None:
    from calls.admission import admit
    from contract.dispatch import DispatchClaims
    from contract.session_type import SessionType

    def claims(**target: uuid.UUID) -> DispatchClaims:
        return DispatchClaims(
            ver=1, iss="t", iat=0, exp=1, session_id=uuid.uuid4(), session_type=SessionType.TEST, **target
        )

    revision = catalog.agents[SUPPORT].active_revision.pipeline
    team = catalog.teams[TEAM].pipeline
    assert admit(claims(team_id=TEAM), catalog, settings).pipeline is team
    assert admit(claims(agent_id=SUPPORT), catalog, settings).pipeline is revision
    # and the two differ where it shows: the team's voice wins on a team call
    assert team.tts_chain[0].voice_id == "sage" and revision.tts_chain[0].voice_id == "alloy"


async def test_deepgram_self_hosted_urls_and_voice_in_voice_id(built) -> None:
    config = VoicePipelineConfig(
        language="en-GB",
        stt_chain=[STTEntry(provider="deepgram", model="nova-2", base_url="wss://dg.internal/v1/listen")],
        tts_chain=[TTSEntry(provider="deepgram", voice_id="aura-2-orion-en", base_url="https://dg.internal/v1/speak")],
        tts_speed=1.2,
    )
    pipeline = built(_llm_on_localhost(config))
    assert isinstance(pipeline.stt, deepgram.STT)
    assert (pipeline.stt.model, pipeline.stt._opts.language) == ("nova-2", "en-GB")
    assert pipeline.stt._opts.endpoint_url == "wss://dg.internal/v1/listen"
    assert isinstance(pipeline.tts, deepgram.TTS)
    assert (pipeline.tts._opts.model, pipeline.tts._opts.speed) == ("aura-2-orion-en", 1.2)
    assert pipeline.tts._opts.base_url == "https://dg.internal/v1/speak"


async def test_build_llm_needs_only_the_model_chain_keys(catalog, monkeypatch) -> None:
    for env in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "OPENAI_COMPATIBLE_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    # sales: Deepgram STT and TTS, whose key is missing here, do not matter for a text session
    config = catalog.agents[SALES].active_revision.pipeline
    model = build_llm(config, Settings(_env_file=None, OPENAI_API_KEY="sk-test-openai"))
    members = list(model._llm_instances)
    try:
        assert isinstance(model, llm.FallbackAdapter)
        assert [m.model for m in members] == ["llama3.2:3b", "gpt-4.1-mini"]
        assert session_connect_options(config).llm_conn_options.timeout == 5.0
    finally:
        await model.aclose()
    # closing the chain closes every model's HTTP client (post-call builds one chain per call)
    assert all(m._http.is_closed() for m in members)
    with pytest.raises(PipelineError) as err:
        build_llm(config, Settings(_env_file=None))
    assert [p.field for p in err.value.problems] == ["pipeline.model_chain[1].provider"]


async def test_without_a_shared_vad_the_pipeline_loads_its_own(catalog, settings) -> None:
    pipeline = build_pipeline(_llm_on_localhost(catalog.teams[TEAM].pipeline), settings, vad=None)
    try:
        assert isinstance(pipeline.vad, inference.VAD)
        assert pipeline.vad.min_silence_duration == 0.45
    finally:
        await pipeline.aclose()


async def test_provider_clients_share_one_tls_context_and_close_with_the_pipeline(
    catalog, settings, shared_vad
) -> None:
    from pipelines.http_clients import tls_context

    # support: Deepgram and OpenAI STT, two OpenAI LLMs, OpenAI and Deepgram TTS
    pipeline = build_pipeline(catalog.agents[SUPPORT].active_revision.pipeline, settings, vad=shared_vad)
    clients = [p._http for p in pipeline.providers if hasattr(p, "_http")]
    assert len(clients) == 4
    contexts = {id(c._client._transport._pool._ssl_context) for c in clients}
    assert contexts == {id(tls_context())}
    await pipeline.aclose()
    assert all(c.is_closed() for c in clients)
