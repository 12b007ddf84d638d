"""A call's `VoicePipelineConfig` turned into the STT, LLM, TTS, VAD and turn handling of its AgentSession.

A chain with one entry becomes that provider's plugin object; a longer chain becomes the matching
livekit-agents `FallbackAdapter` (first entry primary) with the timeouts and retries of
`config.fallback`. Which config a call uses is admission's choice (calls/admission.py): team calls take the
team's, agent calls the active revision's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from livekit.agents import llm, stt, tts
from livekit.agents import vad as agents_vad
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.turn import TurnHandlingOptions

from catalog.pipeline_config import FallbackConfig, ModelChainEntry, STTEntry, VoicePipelineConfig
from pipelines import interruptions
from pipelines.language import stt_language
from pipelines.provider_data import checked_options
from pipelines.providers import PROVIDERS, SettingsWithKeys
from pipelines.turn_handling import turn_handling_options
from pipelines.vad import SharedVAD
from pipelines.validate import PipelineProblem, pipeline_problems


class PipelineError(ValueError):
    """The config cannot be built; `problems` says where and why (never a key's value)."""

    def __init__(self, problems: Sequence[PipelineProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


# Declared outside BuiltPipeline, whose `stt`, `llm` and `tts` fields shadow the module names in its body.
# `[Any]`: livekit's STT, LLM and TTS are generic in the extra events a plugin emits (see pipelines/providers.py).
ProviderObject: TypeAlias = stt.STT[Any] | llm.LLM[Any] | tts.TTS[Any]
ModelObject: TypeAlias = llm.LLM[Any]


@dataclass(frozen=True)
class BuiltPipeline:
    config: VoicePipelineConfig
    stt: stt.STT[Any]
    llm: llm.LLM[Any]
    tts: tts.TTS[Any]
    vad: agents_vad.VAD
    turn_handling: TurnHandlingOptions
    conn_options: SessionConnectOptions
    user_away_timeout: float | None
    # `voicemail_detection_model` on the primary model's provider; None: the call's own model classifies
    voicemail_llm: ModelObject | None = None
    # keyword arguments of the behaviour modules (pipelines/interruptions.py)
    extra_session_options: dict[str, Any] = field(default_factory=dict)
    # the provider objects themselves (inside any adapter): they own HTTP clients to close
    providers: tuple[ProviderObject, ...] = field(default=())

    def session_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `AgentSession(...)`."""
        kwargs: dict[str, Any] = {
            "stt": self.stt,
            "llm": self.llm,
            "tts": self.tts,
            "vad": self.vad,
            "turn_handling": self.turn_handling,
            "conn_options": self.conn_options,
        }
        if self.user_away_timeout is not None:
            kwargs["user_away_timeout"] = self.user_away_timeout
        kwargs.update(self.extra_session_options)
        return kwargs

    async def aclose(self) -> None:
        """Close the provider clients; AgentSession does not close components it was given."""
        adapters = [c for c in (self.stt, self.llm, self.tts) if c not in self.providers]
        await asyncio.gather(*(c.aclose() for c in (*adapters, *self.providers)), return_exceptions=True)


def _conn_options(timeout_ms: int, chain_length: int, fallback: FallbackConfig) -> APIConnectOptions:
    return APIConnectOptions(
        # a FallbackAdapter overrides max_retry with its own per-provider count; a lone provider
        # keeps livekit's retries, having no other provider to turn to
        max_retry=DEFAULT_API_CONNECT_OPTIONS.max_retry if chain_length == 1 else fallback.max_retry_per_provider,
        retry_interval=fallback.retry_interval_ms / 1000,
        timeout=timeout_ms / 1000,
    )


def session_connect_options(config: VoicePipelineConfig) -> SessionConnectOptions:
    """`AgentSession(conn_options=...)`: the config's timeouts for every provider request."""
    fb = config.fallback
    return SessionConnectOptions(
        stt_conn_options=_conn_options(fb.stt_attempt_timeout_ms, len(config.stt_chain), fb),
        llm_conn_options=_conn_options(fb.llm_attempt_timeout_ms, len(config.model_chain), fb),
        tts_conn_options=_conn_options(fb.tts_attempt_timeout_ms, len(config.tts_chain), fb),
    )


def _api_key(provider_name: str, settings: SettingsWithKeys) -> str:
    key = PROVIDERS[provider_name].api_key(settings)
    if key is None:  # pipeline_problems ran first; this keeps a later edit from sending no key
        raise PipelineError([PipelineProblem("provider", f"no API key for {provider_name!r}")])
    return key


def _build_stt(entry: STTEntry, config: VoicePipelineConfig, settings: SettingsWithKeys) -> stt.STT[Any]:
    provider = PROVIDERS[entry.provider]
    assert provider.build_stt is not None and provider.stt_signature is not None
    return provider.build_stt(
        entry,
        api_key=_api_key(entry.provider, settings),
        language=stt_language(config, entry),
        options=checked_options(entry.provider_data, provider.stt_signature),
    )


def _build_llm(entry: ModelChainEntry, settings: SettingsWithKeys) -> llm.LLM[Any]:
    builder = PROVIDERS[entry.provider].build_llm
    assert builder is not None
    return builder(entry, api_key=_api_key(entry.provider, settings))


def tts_options(config: VoicePipelineConfig, index: int) -> dict[str, Any]:
    """The TTS entry's provider data; the primary voice also takes `voice_tuning` (the platform tunes one voice)."""
    entry = config.tts_chain[index]
    return {**entry.provider_data, **(config.voice_tuning if index == 0 else {})}


def _build_tts(index: int, config: VoicePipelineConfig, settings: SettingsWithKeys) -> tts.TTS[Any]:
    entry = config.tts_chain[index]
    provider = PROVIDERS[entry.provider]
    assert provider.build_tts is not None and provider.tts_signature is not None
    return provider.build_tts(
        entry,
        api_key=_api_key(entry.provider, settings),
        speed=config.tts_speed,
        options=checked_options(tts_options(config, index), provider.tts_signature),
    )


class OwningFallbackAdapter(llm.FallbackAdapter):
    """A model chain built on its own (`build_llm`): closing it closes the models it holds, which
    `llm.FallbackAdapter` leaves to whoever built them (each holds an HTTP client)."""

    def __init__(self, llms: list[llm.LLM[Any]], **kwargs: Any) -> None:
        super().__init__(llms, **kwargs)
        self._members = list(llms)

    @property
    def members(self) -> list[llm.LLM[Any]]:
        """The chain's models in order (the console names the one that failed)."""
        return list(self._members)

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.gather(*(m.aclose() for m in self._members), return_exceptions=True)


def _llm_chain(
    llms: list[llm.LLM[Any]], fb: FallbackConfig, adapter: type[llm.FallbackAdapter] = llm.FallbackAdapter
) -> llm.LLM[Any]:
    if len(llms) == 1:
        return llms[0]
    return adapter(
        llms,
        attempt_timeout=fb.llm_attempt_timeout_ms / 1000,
        max_retry_per_llm=fb.max_retry_per_provider,
        retry_interval=fb.retry_interval_ms / 1000,
    )


def build_llm(config: VoicePipelineConfig, settings: SettingsWithKeys) -> llm.LLM[Any]:
    """Only the model chain, for text sessions (console, post-call, tests): STT and TTS keys are not required.
    Pair it with `AgentSession(conn_options=session_connect_options(config))` for the config's timeouts;
    `aclose()` on the result closes every model of the chain."""
    problems = [
        p for p in pipeline_problems(config, settings, where="pipeline") if p.field.startswith("pipeline.model_chain")
    ]
    if problems:
        raise PipelineError(problems)
    return _llm_chain([_build_llm(e, settings) for e in config.model_chain], config.fallback, OwningFallbackAdapter)


def build_pipeline(config: VoicePipelineConfig, settings: SettingsWithKeys, *, vad: SharedVAD | None) -> BuiltPipeline:
    """Raises `PipelineError` for a config with problems (see `pipelines.validate.pipeline_problems`).

    `vad` is the process's `SharedVAD` (loaded in the worker's setup function); None loads the model here,
    which suits a one-off process such as the console; a worker loads it before any caller waits."""
    problems = pipeline_problems(config, settings, where="pipeline")
    if problems:
        raise PipelineError(problems)
    fb = config.fallback
    call_vad = (vad or SharedVAD.load()).for_pipeline(config)

    stts = [_build_stt(e, config, settings) for e in config.stt_chain]
    llms = [_build_llm(e, settings) for e in config.model_chain]
    ttss = [_build_tts(i, config, settings) for i in range(len(config.tts_chain))]
    voicemail_llm = None
    if config.voicemail_detection_mode != "off" and config.voicemail_detection_model:
        primary = config.model_chain[0]
        voicemail_llm = _build_llm(primary.model_copy(update={"model": config.voicemail_detection_model}), settings)

    stt_out: stt.STT[Any] = stts[0]
    if len(stts) > 1:
        # the VAD wraps any non-streaming STT (OpenAI's) so that it can sit in a streaming chain
        stt_out = stt.FallbackAdapter(
            stts,
            vad=call_vad,
            attempt_timeout=fb.stt_attempt_timeout_ms / 1000,
            max_retry_per_stt=fb.max_retry_per_provider,
            retry_interval=fb.retry_interval_ms / 1000,
        )
    llm_out = _llm_chain(llms, fb)
    tts_out: tts.TTS[Any] = ttss[0]
    if len(ttss) > 1:
        # tts.FallbackAdapter has no timeout of its own: it uses the session's tts_conn_options
        tts_out = tts.FallbackAdapter(ttss, max_retry_per_tts=fb.max_retry_per_provider)

    return BuiltPipeline(
        config=config,
        stt=stt_out,
        llm=llm_out,
        tts=tts_out,
        vad=call_vad,
        turn_handling=turn_handling_options(config),
        conn_options=session_connect_options(config),
        # the session's "away" state then matches the silence timeout that `CallLimits` enforces
        user_away_timeout=config.silence_timeout_ms / 1000 if config.silence_timeout_ms else None,
        voicemail_llm=voicemail_llm,
        extra_session_options=interruptions.session_options(config),
        providers=(*stts, *llms, *ttss, *([voicemail_llm] if voicemail_llm else [])),
    )
