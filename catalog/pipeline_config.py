"""VoicePipelineConfig: what a revision (or a team) says about its STT / LLM / TTS / VAD / turn handling.

Field names and units follow the platform's `VoicePipelineConfigCreate`, `LocalVADParams`,
`FirstSpeakingConfig` and `RouterConfigCreate.model_chain` wherever they answer the same question; where the
platform has one flat field (`stt_provider`, `stt_model`, `voice_id`) and we need an ordered fallback chain,
the chain entries reuse those names (`stt_chain[].provider/model`, `tts_chain[].voice_id`). The mapping to
livekit-agents is documented in docs/pipeline-config.md and implemented in `pipelines/`.

This module only describes and range-checks the data; which providers exist and whether their keys are
configured is `pipelines.providers`' business.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Per-model knobs, as the platform's `ModelConfig`."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    request_timeout_ms: int | None = Field(None, ge=100, le=120_000)


class ModelChainEntry(_Strict):
    """One link of an ordered model chain (first is primary). `provider` + `base_url` choose the endpoint."""

    model: str = Field(min_length=1)
    provider: str = "openai"
    base_url: str | None = None
    config: ModelConfig = ModelConfig()


class STTEntry(_Strict):
    provider: str = Field(min_length=1)
    model: str | None = None
    language: str | None = Field(None, max_length=16)
    base_url: str | None = None
    # keyword arguments for the provider's plugin constructor (the platform's `stt_provider_data`)
    provider_data: dict[str, Any] = Field(default_factory=dict)


class TTSEntry(_Strict):
    provider: str = Field(min_length=1)
    model: str | None = None
    voice_id: str | None = None
    base_url: str | None = None
    # keyword arguments for the provider's plugin constructor (the platform's `tts_provider_data`)
    provider_data: dict[str, Any] = Field(default_factory=dict)


class LocalVADParams(_Strict):
    """Silero tuning, as the platform's `LocalVADParams` (same defaults and ranges)."""

    confidence: float = Field(0.7, ge=0.0, le=1.0)
    start_secs: float = Field(0.2, ge=0.0, le=2.0)
    stop_secs: float = Field(0.5, ge=0.0, le=3.0)
    min_volume: float = Field(0.6, ge=0.0, le=1.0)


class FirstSpeakingConfig(_Strict):
    """The opening turn, as the platform's `FirstSpeakingConfig`."""

    first_speaker: Literal["agent", "user"] = "agent"
    mode: Literal["static", "dynamic"] = "static"
    text: str | None = Field(None, max_length=1000)
    instructions: str | None = Field(None, max_length=2000)
    interruptible: bool = True
    ai_disclosure_text: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _static_needs_text(self) -> FirstSpeakingConfig:
        if self.first_speaker == "agent" and self.mode == "static" and not self.text:
            raise ValueError("first_speaker agent with mode static needs text")
        return self


class FallbackConfig(_Strict):
    """Timeouts and retries of provider requests.

    The attempt timeouts and the retry interval apply to every request of the pipeline, whether or not
    its chain has a fallback. `max_retry_per_provider` is how often a FallbackAdapter retries one
    provider before it moves to the next; a single-entry chain has nowhere to move to and keeps
    livekit's own retry count. The full mapping is in docs/pipeline-config.md.
    """

    llm_attempt_timeout_ms: int = Field(5000, ge=100, le=60_000)
    stt_attempt_timeout_ms: int = Field(10_000, ge=100, le=60_000)
    tts_attempt_timeout_ms: int = Field(10_000, ge=100, le=60_000)
    max_retry_per_provider: int = Field(0, ge=0, le=5)
    retry_interval_ms: int = Field(500, ge=0, le=10_000)


class TurnAnalyzerParams(_Strict):
    """The platform's smart-turn-v3 tuning (`TurnAnalyzerParams`): accepted with its ranges; `voice-worker
    check` explains that this worker's end-of-turn model is livekit's, tuned by the endpointing fields."""

    max_duration_secs: float = Field(8.0, ge=2.0, le=30.0)
    pre_speech_ms: float = Field(500.0, ge=0.0, le=2000.0)
    stop_secs: float = Field(2.0, ge=0.5, le=8.0)


BackgroundAudioPreset = Literal["office", "cafe", "city", "keyboard_typing", "keyboard_typing2"]
SilenceReminderMode = Literal["static", "auto"]
VoicemailDetectionMode = Literal["off", "leave_message"]
# the keys of a telephone keypad, as SIP INFO / RFC 4733 and livekit's `publish_dtmf` carry them
DTMF_KEYS = "0123456789*#ABCD"

_PHRASE_MAX_CHARS = 100

# The platform's flat fields that this model keeps nested, and where each one goes.
_FIRST_SPEAKING_FIELDS = ("first_speaker", "mode", "text", "instructions", "interruptible", "ai_disclosure_text")
_PRIMARY_STT_FIELDS = {"stt_provider": "provider", "stt_model": "model", "stt_provider_data": "provider_data"}
_PRIMARY_TTS_FIELDS = {"voice_id": "voice_id", "tts_provider_data": "provider_data"}
_FLAT_MAX_CHARS = {"stt_provider": 32, "stt_model": 64}


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    if isinstance(value, dict):
        return dict(value)
    raise ValueError(f"expected a mapping, got {type(value).__name__}")


def _fold_primary(data: dict[str, Any], chain_name: str, flat: dict[str, str], default: BaseModel) -> None:
    """The platform names one provider (`stt_provider`, `stt_model`, `voice_id`, `*_provider_data`); here that is
    the chain's primary entry. A flat field fills it in; one that contradicts an explicit entry is an error."""
    given: dict[str, Any] = {}
    for name, key in flat.items():
        value = data.pop(name, None)
        if value is None:
            continue
        limit = _FLAT_MAX_CHARS.get(name)
        if limit is not None and (not isinstance(value, str) or len(value) > limit):
            raise ValueError(f"{name} must be a string of at most {limit} characters")
        given[key] = value
    if not given:
        return
    names = {key: name for name, key in flat.items()}
    chain = data.get(chain_name)
    if chain is not None:
        if not isinstance(chain, (list, tuple)) or not chain:
            return  # the field's own validation reports it
        first = _as_dict(chain[0])
        for key, value in given.items():
            if first.get(key) not in (None, {}, value):
                raise ValueError(
                    f"{names[key]} {value!r} contradicts {chain_name}[0].{key} {first[key]!r} (give one of them)"
                )
        data[chain_name] = [{**first, **given}, *chain[1:]]
        return
    base = default.model_dump(exclude_defaults=True)
    if given.get("provider", base.get("provider")) != base.get("provider"):
        base = {}  # another provider: the default entry's model and voice are not its own
    data[chain_name] = [{**base, **given}]


def _nullable(annotation: Any) -> bool:
    return type(None) in get_args(annotation)


class VoicePipelineConfig(_Strict):
    """Every behaviour field of the platform's `VoicePipelineConfigCreate` under its own name, type, enum and
    range (docs/pipeline-config.md has one row per field). The platform's flat fields for the primary provider
    (`stt_provider`, `stt_model`, `voice_id`, `*_provider_data`) and for the opening turn (`first_speaker`, `mode`,
    `text`, `instructions`, `interruptible`, `ai_disclosure_text`) are accepted and folded into `stt_chain[0]`,
    `tts_chain[0]` and `first_speaking`; a `null` where this model has no null means the default, as it does
    on the platform."""

    language: str = Field("en", max_length=16)
    # the caller's locale (BCP 47, e.g. en-US); refines `language` for providers that take a region
    locale: str | None = Field(None, max_length=16)
    multilingual_enabled: bool = False
    multilingual_languages: tuple[str, ...] = Field((), max_length=50)
    stt_chain: tuple[STTEntry, ...] = Field((STTEntry(provider="deepgram", model="nova-3"),), min_length=1)
    model_chain: tuple[ModelChainEntry, ...] = Field((ModelChainEntry(model="gpt-4.1-mini"),), min_length=1)
    tts_chain: tuple[TTSEntry, ...] = Field(
        (TTSEntry(provider="openai", model="gpt-4o-mini-tts", voice_id="alloy"),), min_length=1
    )
    tts_speed: float = Field(1.0, ge=0.0, lt=10.0)
    # keyword arguments for the primary TTS's plugin constructor that shape the voice
    voice_tuning: dict[str, Any] = Field(default_factory=dict)
    # text the TTS reads in place of a word or phrase (never the transcript); rules in pipelines/pronunciation.py
    pronunciation_overrides: dict[str, str] = Field(default_factory=dict, max_length=500)
    persona_id: uuid.UUID | None = None

    local_vad_params: LocalVADParams = LocalVADParams()
    # keyword arguments for the VAD's constructor (livekit's `inference.VAD`)
    vad_provider_data: dict[str, Any] = Field(default_factory=dict)
    noise_cancellation_enabled: bool = False
    turn_detection: Literal["vad", "stt", "turn_detector"] = "vad"
    turn_analyzer_params: TurnAnalyzerParams | None = None
    endpointing_min_delay_ms: int = Field(500, ge=0, le=10_000)
    endpointing_max_delay_ms: int = Field(3000, ge=0, le=30_000)
    interruptions_enabled: bool = True
    interruption_min_words: int = Field(0, ge=0, le=20)
    interruption_min_duration_ms: int = Field(500, ge=0, le=10_000)
    interruption_hard_phrases: tuple[str, ...] = Field((), max_length=20)
    interruption_trigger_phrases: tuple[str, ...] = Field((), max_length=50)
    interruption_backoff_ms: int = Field(0, ge=0, le=10_000)
    interruption_final_transcript_grace_ms: int = Field(2000, ge=0, le=2000)
    preemptive_generation: bool = True

    first_speaking: FirstSpeakingConfig = FirstSpeakingConfig(text="Hello, how can I help you today?")
    max_call_duration_ms: int | None = Field(None, ge=1000, le=14_400_000)
    silence_timeout_ms: int | None = Field(None, ge=0, le=600_000)
    silence_reminder_mode: SilenceReminderMode = "static"
    silence_reminder_message: str | None = Field(None, max_length=500)
    silence_reminder_count: int = Field(1, ge=0, le=10)
    silence_end_action: Literal["hangup_immediate", "speak_then_hangup"] = "speak_then_hangup"
    silence_end_message: str | None = Field(None, max_length=500)

    background_audio_enabled: bool = False
    background_audio_preset: BackgroundAudioPreset = "office"
    background_audio_volume: float = Field(0.3, ge=0.0, le=1.0)
    background_audio_loop: bool = True

    dtmf_enabled: bool = False
    dtmf_prefix: str = Field("Keypad input: ", max_length=32)
    # "" = no termination digit
    dtmf_termination_digit: str = Field("#", max_length=1)
    dtmf_max_digits: int = Field(16, ge=1, le=64)
    dtmf_inter_digit_timeout_ms: int = Field(3000, ge=250, le=60_000)

    voicemail_detection_mode: VoicemailDetectionMode = "off"
    voicemail_detection_model: str | None = Field(None, max_length=64)
    voicemail_detection_timeout_ms: int = Field(20_000, ge=0, le=60_000)
    voicemail_message: str | None = Field(None, max_length=1000)

    fallback: FallbackConfig = FallbackConfig()

    @model_validator(mode="before")
    @classmethod
    def _platform_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, value in list(data.items()):
            info = cls.model_fields.get(name)
            if value is None and info is not None and not _nullable(info.annotation):
                del data[name]
        opening = {name: data.pop(name) for name in _FIRST_SPEAKING_FIELDS if name in data}
        opening = {name: value for name, value in opening.items() if value is not None}
        if opening:
            explicit = "first_speaking" in data and data["first_speaking"] is not None
            nested = _as_dict(data["first_speaking"]) if explicit else cls._default_first_speaking()
            for name, value in opening.items():
                if explicit and nested.get(name) not in (None, value):
                    raise ValueError(
                        f"{name} {value!r} contradicts first_speaking.{name} {nested[name]!r} (give one of them)"
                    )
            data["first_speaking"] = {**nested, **opening}
        _fold_primary(data, "stt_chain", _PRIMARY_STT_FIELDS, cls._default_entry("stt_chain"))
        _fold_primary(data, "tts_chain", _PRIMARY_TTS_FIELDS, cls._default_entry("tts_chain"))
        return data

    @classmethod
    def _default_first_speaking(cls) -> dict[str, Any]:
        default = cls.model_fields["first_speaking"].default
        assert isinstance(default, FirstSpeakingConfig)
        return default.model_dump()

    @classmethod
    def _default_entry(cls, chain_name: str) -> BaseModel:
        default = cls.model_fields[chain_name].default
        assert isinstance(default, tuple) and isinstance(default[0], BaseModel)
        return default[0]

    @field_validator("interruption_hard_phrases", "interruption_trigger_phrases", "multilingual_languages")
    @classmethod
    def _non_empty_items(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(v.strip() for v in values)
        if any(not v for v in cleaned):
            raise ValueError("entries must not be empty")
        if any(len(v) > _PHRASE_MAX_CHARS for v in cleaned):
            raise ValueError(f"entries are at most {_PHRASE_MAX_CHARS} characters")
        return cleaned

    @field_validator("pronunciation_overrides")
    @classmethod
    def _overrides(cls, overrides: dict[str, str]) -> dict[str, str]:
        for word, spoken in overrides.items():
            if not word.strip():
                raise ValueError("a pronunciation override needs a non-empty word")
            if len(word) > _PHRASE_MAX_CHARS or len(spoken) > 2 * _PHRASE_MAX_CHARS:
                raise ValueError(
                    f"{word[:20]!r}: words are at most {_PHRASE_MAX_CHARS} characters, "
                    f"their spoken form at most {2 * _PHRASE_MAX_CHARS}"
                )
        return overrides

    @field_validator("dtmf_termination_digit")
    @classmethod
    def _keypad_key(cls, digit: str) -> str:
        if digit and digit not in DTMF_KEYS:
            raise ValueError(f"{digit!r} is not a keypad key (one of {DTMF_KEYS}, or empty for none)")
        return digit

    @model_validator(mode="after")
    def _consistent(self) -> VoicePipelineConfig:
        if self.endpointing_max_delay_ms < self.endpointing_min_delay_ms:
            raise ValueError(
                f"endpointing_max_delay_ms ({self.endpointing_max_delay_ms}) is below "
                f"endpointing_min_delay_ms ({self.endpointing_min_delay_ms})"
            )
        return self
