"""`*_provider_data` and `voice_tuning` reach the plugin constructors, checked against their signatures (a typo is a
problem naming the key); `language` / `locale` / `multilingual_*` reach the STT and the instructions; settings that
cannot apply here are warnings naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from livekit.plugins import deepgram, openai

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.applicability import pipeline_warnings
from pipelines.builder import BuiltPipeline, PipelineError, build_pipeline
from pipelines.language import reply_language_note
from pipelines.vad import SharedVAD
from pipelines.validate import pipeline_problems
from worker.settings import Settings

LOCAL_LLM = {"provider": "openai_compatible", "model": "local", "base_url": "http://127.0.0.1:9/v1"}


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for env in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "OPENAI_COMPATIBLE_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    return Settings(_env_file=None, OPENAI_API_KEY="sk-test-openai", DEEPGRAM_API_KEY="dg-test-key")


@pytest.fixture
async def built(settings: Settings) -> AsyncIterator[Callable[..., BuiltPipeline]]:
    pipelines: list[BuiltPipeline] = []
    vad = SharedVAD.load()

    def build(**fields: Any) -> BuiltPipeline:
        config = VoicePipelineConfig.model_validate({"model_chain": [LOCAL_LLM], **fields})
        pipeline = build_pipeline(config, settings, vad=vad)
        pipelines.append(pipeline)
        return pipeline

    yield build
    for pipeline in pipelines:
        await pipeline.aclose()


def problems(settings: Settings, **fields: Any) -> list[str]:
    config = VoicePipelineConfig.model_validate({"model_chain": [LOCAL_LLM], **fields})
    return [str(p) for p in pipeline_problems(config, settings, where="pipeline")]


def warnings(**fields: Any) -> list[str]:
    return [str(w) for w in pipeline_warnings(VoicePipelineConfig.model_validate(fields), where="pipeline")]


# -- provider data and voice tuning --------------------------------------------------------------------------------


async def test_provider_data_and_voice_tuning_reach_the_constructors(built: Callable[..., BuiltPipeline]) -> None:
    pipeline = built(
        stt_provider="deepgram",
        stt_provider_data={"smart_format": True, "keyterm": ["Acme"], "endpointing_ms": 40},
        voice_id="nova",
        tts_provider_data={"response_format": "pcm"},
        voice_tuning={"instructions": "Warm and unhurried."},
        vad_provider_data={"prefix_padding_duration": 0.25, "max_buffered_speech": 30.0},
    )
    assert isinstance(pipeline.stt, deepgram.STT)
    assert pipeline.stt._opts.smart_format is True
    assert pipeline.stt._opts.keyterm == ["Acme"]
    assert pipeline.stt._opts.endpointing_ms == 40
    assert isinstance(pipeline.tts, openai.TTS)
    assert pipeline.tts._opts.voice == "nova"
    assert pipeline.tts._opts.response_format == "pcm"
    assert pipeline.tts._opts.instructions == "Warm and unhurried."
    assert pipeline.vad._opts.prefix_padding_duration == 0.25
    assert pipeline.vad._opts.max_buffered_speech == 30.0


async def test_voice_tuning_tunes_the_primary_voice_only(built: Callable[..., BuiltPipeline]) -> None:
    pipeline = built(
        tts_chain=[{"provider": "openai", "voice_id": "alloy"}, {"provider": "openai", "voice_id": "echo"}],
        voice_tuning={"instructions": "Cheerful."},
    )
    primary, backup = pipeline.providers[-2:]
    assert isinstance(primary, openai.TTS) and isinstance(backup, openai.TTS)
    assert primary._opts.instructions == "Cheerful."
    assert not backup._opts.instructions


def test_a_typo_is_a_problem_naming_the_key_and_what_the_plugin_takes(settings: Settings) -> None:
    [problem] = problems(settings, stt_provider="deepgram", stt_provider_data={"smart_formt": True})
    assert problem.startswith("pipeline.stt_chain[0].provider_data.smart_formt: deepgram.STT takes no 'smart_formt'")
    assert "smart_format" in problem
    [tuning] = problems(settings, voice_tuning={"instruction": "calm"})
    assert tuning.startswith("pipeline.voice_tuning.instruction: openai.TTS takes no 'instruction'")
    [vad] = problems(settings, vad_provider_data={"prefix_padding": 0.2})
    assert vad.startswith("pipeline.vad_provider_data.prefix_padding: inference.VAD takes no 'prefix_padding'")


def test_a_key_the_pipeline_sets_names_the_field_that_sets_it(settings: Settings) -> None:
    assert problems(settings, tts_provider_data={"speed": 1.2}) == [
        "pipeline.tts_chain[0].provider_data.speed: set by tts_speed, not here"
    ]
    assert problems(settings, stt_provider="openai", stt_provider_data={"language": "fr"}) == [
        "pipeline.stt_chain[0].provider_data.language: set by language / locale / stt_chain[i].language, not here"
    ]
    assert problems(settings, vad_provider_data={"activation_threshold": 0.2}) == [
        "pipeline.vad_provider_data.activation_threshold: set by local_vad_params.confidence, not here"
    ]


def test_a_value_of_the_wrong_type_is_a_problem(settings: Settings) -> None:
    [problem] = problems(settings, stt_provider="deepgram", stt_provider_data={"endpointing_ms": "soon"})
    assert problem.startswith("pipeline.stt_chain[0].provider_data.endpointing_ms: 'soon' is not a valid int")


def test_voice_tuning_and_provider_data_may_not_both_set_a_key(settings: Settings) -> None:
    assert problems(settings, tts_provider_data={"instructions": "a"}, voice_tuning={"instructions": "b"}) == [
        "pipeline.voice_tuning.instructions: also set in tts_chain[0].provider_data (give one)"
    ]


def test_build_refuses_what_check_reports(settings: Settings) -> None:
    config = VoicePipelineConfig.model_validate({"model_chain": [LOCAL_LLM], "voice_tuning": {"stability": 0.5}})
    with pytest.raises(PipelineError, match=r"voice_tuning\.stability"):
        build_pipeline(config, settings, vad=SharedVAD.load())


def test_a_platform_voice_catalog_uuid_is_a_problem(settings: Settings) -> None:
    [problem] = problems(settings, voice_id="0b6a4f2e-8c1d-4e5f-9a7b-3c2d1e0f9a8b")
    assert problem.startswith("pipeline.tts_chain[0].voice_id: '0b6a4f2e-8c1d-4e5f-9a7b-3c2d1e0f9a8b' is a platform")


# -- language, locale, multilingual --------------------------------------------------------------------------------


async def test_locale_refines_the_stt_language(built: Callable[..., BuiltPipeline]) -> None:
    pipeline = built(stt_provider="deepgram", language="en", locale="en-GB")
    assert isinstance(pipeline.stt, deepgram.STT)
    assert pipeline.stt._opts.language == "en-GB"


async def test_multilingual_detects_the_language_with_each_provider(built: Callable[..., BuiltPipeline]) -> None:
    dg = built(stt_provider="deepgram", multilingual_enabled=True)
    assert isinstance(dg.stt, deepgram.STT) and dg.stt._opts.language == "multi"
    oa = built(stt_provider="openai", multilingual_enabled=True)
    assert isinstance(oa.stt, openai.STT) and oa.stt._opts.detect_language is True
    listed = built(
        stt_provider="openai",
        stt_model="gpt-transcribe",
        multilingual_enabled=True,
        multilingual_languages=["en", "es"],
    )
    assert isinstance(listed.stt, openai.STT)
    assert listed.stt._opts.languages == ["en", "es"] and listed.stt._opts.detect_language is False


async def test_an_entry_language_wins_over_multilingual(built: Callable[..., BuiltPipeline]) -> None:
    pipeline = built(stt_chain=[{"provider": "deepgram", "language": "fr"}], multilingual_enabled=True)
    assert isinstance(pipeline.stt, deepgram.STT) and pipeline.stt._opts.language == "fr"


def test_the_reply_language_follows_the_caller() -> None:
    multilingual = VoicePipelineConfig(multilingual_enabled=True, multilingual_languages=("en", "es"))
    note = reply_language_note(multilingual)
    assert note is not None
    assert "english (en), spanish (es)" in note and "language of the caller's most recent message" in note
    local = reply_language_note(VoicePipelineConfig(locale="pt-BR"))
    assert local is not None and "pt-BR" in local and "portuguese (pt)" in local
    assert reply_language_note(VoicePipelineConfig()) is None


def test_turn_detector_refuses_a_multilingual_call(settings: Settings) -> None:
    found = problems(settings, turn_detection="turn_detector", multilingual_enabled=True)
    assert any(p.startswith("pipeline.turn_detection: the offline turn-detector model is tuned") for p in found)


# -- warnings ------------------------------------------------------------------------------------------------------


def test_what_cannot_apply_here_is_a_warning_naming_the_field() -> None:
    assert warnings(noise_cancellation_enabled=True) == [
        "pipeline.noise_cancellation_enabled: not applied: LiveKit's noise cancellation (BVC) is a LiveKit Cloud "
        "filter (livekit-plugins-noise-cancellation) that this self-hosted worker does not ship; "
        "calls run without it"
    ]
    voicemail = warnings(voicemail_detection_mode="leave_message", voicemail_message="Please call us back.")
    assert voicemail == [
        "pipeline.voicemail_detection_mode: applies to SIP callers only (a phone line LiveKit SIP bridges); "
        "web callers are never screened"
    ]
    assert any(w.startswith("pipeline.turn_analyzer_params: not applied") for w in warnings(turn_analyzer_params={}))
    assert any(
        w.startswith("pipeline.local_vad_params.min_volume: not applied")
        for w in warnings(local_vad_params={"min_volume": 0.3})
    )
    assert warnings() == []


def test_settings_whose_switch_is_off_are_warnings() -> None:
    assert warnings(dtmf_max_digits=4, background_audio_preset="cafe", voicemail_message="Hi") == [
        "pipeline.background_audio_preset: has no effect: background_audio_enabled is false",
        "pipeline.dtmf_max_digits: has no effect: dtmf_enabled is false",
        "pipeline.voicemail_message: has no effect: voicemail_detection_mode is off",
    ]
    assert warnings(silence_reminder_mode="auto") == [
        "pipeline.silence_reminder_mode: has no effect: silence_timeout_ms is off (0 or null)"
    ]
    assert any(
        "no phrase is heard" in w for w in warnings(interruptions_enabled=False, interruption_hard_phrases=["stop"])
    )


def test_multilingual_warnings_name_the_provider_that_cannot_follow() -> None:
    found = warnings(
        multilingual_enabled=True,
        multilingual_languages=["en", "ko"],
        stt_provider="deepgram",
        tts_chain=[{"provider": "deepgram", "model": "aura-2-thalia-en"}],
    )
    assert any(
        w.startswith("pipeline.multilingual_languages: stt_chain[0] (deepgram)") and "not ko" in w for w in found
    )
    assert any(w.startswith("pipeline.tts_chain[0].provider: a deepgram voice speaks the one language") for w in found)


async def test_the_voicemail_model_is_built_on_the_primary_models_provider(built: Callable[..., BuiltPipeline]) -> None:
    pipeline = built(voicemail_detection_mode="leave_message", voicemail_detection_model="small-classifier")
    assert pipeline.voicemail_llm is not None
    assert pipeline.voicemail_llm.model == "small-classifier"
    assert str(pipeline.voicemail_llm._client.base_url) == LOCAL_LLM["base_url"] + "/"  # type: ignore[attr-defined]
    assert pipeline.voicemail_llm in pipeline.providers  # closed with the pipeline
    assert built(voicemail_detection_model="small-classifier").voicemail_llm is None  # detection is off
