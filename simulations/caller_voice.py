"""The voice mode caller's speech: a TTS that speaks its lines and an STT that hears the agent.

Built from the provider registry (pipelines/providers.py) with this process's keys, like the agent's own chain.
A scenario names them in `caller.voice`; unset, each is the target pipeline's first entry: the agent's STT is
tuned for that kind of voice, and the caller has to understand the agent's own TTS and language. The agent's
`voice_tuning` is not applied: it tunes the agent's voice, not the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livekit.agents import stt, tts
from livekit.agents import vad as agents_vad

from catalog.pipeline_config import STTEntry, TTSEntry, VoicePipelineConfig
from pipelines.language import stt_language
from pipelines.provider_data import checked_options
from pipelines.providers import PROVIDERS, SettingsWithKeys
from pipelines.vad import SharedVAD
from simulations.scenario import CallerVoice


class VoiceUnavailable(RuntimeError):
    """The caller's TTS or STT cannot be built here (unknown provider, missing key, bad provider data)."""


def caller_voice_entries(voice: CallerVoice, pipeline: VoicePipelineConfig) -> tuple[TTSEntry, STTEntry]:
    return voice.tts or pipeline.tts_chain[0], voice.stt or pipeline.stt_chain[0]


# (the scenario's caller voice, the target pipeline) → the caller's TTS and STT; tests hand in their own
VoiceFactory = Callable[[CallerVoice, VoicePipelineConfig], tuple[tts.TTS[Any], stt.STT[Any]]]


def provider_voices(settings: SettingsWithKeys) -> VoiceFactory:
    def build(voice: CallerVoice, pipeline: VoicePipelineConfig) -> tuple[tts.TTS[Any], stt.STT[Any]]:
        tts_entry, stt_entry = caller_voice_entries(voice, pipeline)
        return _tts(tts_entry, settings), _stt(stt_entry, pipeline, settings)

    return build


def _key(provider_name: str, kind: str, settings: SettingsWithKeys) -> str:
    provider = PROVIDERS[provider_name]
    key = provider.api_key(settings)
    if key is None:
        raise VoiceUnavailable(f"{provider.key_env} is not set (needed for the caller's {provider_name} {kind})")
    return key


def _tts(entry: TTSEntry, settings: SettingsWithKeys) -> tts.TTS[Any]:
    provider = PROVIDERS.get(entry.provider)
    if provider is None or provider.build_tts is None or provider.tts_signature is None:
        raise VoiceUnavailable(f"provider {entry.provider!r} has no TTS for the caller")
    try:
        options = checked_options(entry.provider_data, provider.tts_signature)
    except ValueError as exc:
        raise VoiceUnavailable(f"the caller's TTS provider data: {exc}") from None
    return provider.build_tts(entry, api_key=_key(entry.provider, "TTS", settings), speed=1.0, options=options)


def _stt(entry: STTEntry, pipeline: VoicePipelineConfig, settings: SettingsWithKeys) -> stt.STT[Any]:
    provider = PROVIDERS.get(entry.provider)
    if provider is None or provider.build_stt is None or provider.stt_signature is None:
        raise VoiceUnavailable(f"provider {entry.provider!r} has no STT for the caller")
    try:
        options = checked_options(entry.provider_data, provider.stt_signature)
    except ValueError as exc:
        raise VoiceUnavailable(f"the caller's STT provider data: {exc}") from None
    built = provider.build_stt(
        entry,
        api_key=_key(entry.provider, "STT", settings),
        language=stt_language(pipeline, entry),
        options=options,
    )
    if built.capabilities.streaming:
        return built
    # a batch STT (OpenAI's) hears a stream through a VAD that cuts it into utterances, as the agent's does
    return _ClosingStreamAdapter(built, SharedVAD.load().for_pipeline(pipeline))


class _ClosingStreamAdapter(stt.StreamAdapter):
    """Closing it closes the batch STT inside (livekit's adapter leaves that to whoever built it: here, nobody
    else holds it, and it owns an HTTP client)."""

    def __init__(self, batch: stt.STT[Any], vad: agents_vad.VAD) -> None:
        super().__init__(stt=batch, vad=vad)
        self._batch = batch

    async def aclose(self) -> None:
        await super().aclose()
        await self._batch.aclose()
