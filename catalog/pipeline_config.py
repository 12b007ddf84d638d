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

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class TTSEntry(_Strict):
    provider: str = Field(min_length=1)
    model: str | None = None
    voice_id: str | None = None
    base_url: str | None = None


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


class VoicePipelineConfig(_Strict):
    language: str | None = Field("en", max_length=16)
    stt_chain: tuple[STTEntry, ...] = Field((STTEntry(provider="deepgram", model="nova-3"),), min_length=1)
    model_chain: tuple[ModelChainEntry, ...] = Field((ModelChainEntry(model="gpt-4.1-mini"),), min_length=1)
    tts_chain: tuple[TTSEntry, ...] = Field(
        (TTSEntry(provider="openai", model="gpt-4o-mini-tts", voice_id="alloy"),), min_length=1
    )
    tts_speed: float = Field(1.0, gt=0.0, lt=10.0)

    local_vad_params: LocalVADParams = LocalVADParams()
    turn_detection: Literal["vad", "stt", "turn_detector"] = "vad"
    endpointing_min_delay_ms: int = Field(500, ge=0, le=10_000)
    endpointing_max_delay_ms: int = Field(3000, ge=0, le=30_000)
    interruptions_enabled: bool = True
    interruption_min_words: int = Field(0, ge=0, le=20)
    interruption_min_duration_ms: int = Field(500, ge=0, le=10_000)
    preemptive_generation: bool = True

    first_speaking: FirstSpeakingConfig = FirstSpeakingConfig(text="Hello, how can I help you today?")
    max_call_duration_ms: int | None = Field(None, ge=1000, le=14_400_000)
    silence_timeout_ms: int | None = Field(None, ge=0, le=600_000)
    silence_reminder_message: str | None = Field(None, max_length=500)
    silence_reminder_count: int = Field(1, ge=0, le=10)
    silence_end_action: Literal["hangup_immediate", "speak_then_hangup"] = "speak_then_hangup"
    silence_end_message: str | None = Field(None, max_length=500)

    fallback: FallbackConfig = FallbackConfig()

    @model_validator(mode="after")
    def _consistent(self) -> VoicePipelineConfig:
        if self.endpointing_max_delay_ms < self.endpointing_min_delay_ms:
            raise ValueError(
                f"endpointing_max_delay_ms ({self.endpointing_max_delay_ms}) is below "
                f"endpointing_min_delay_ms ({self.endpointing_min_delay_ms})"
            )
        return self
