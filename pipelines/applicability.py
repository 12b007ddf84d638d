"""Fields that are valid but cannot apply, or cannot apply everywhere, where this worker runs: each one a warning
naming the field and saying why, so that a platform setting is never a silent no-op.

Warnings do not refuse a call (`pipelines.validate.pipeline_problems` does that); `voice-worker check` prints
them. Three kinds:
- the feature needs what a self-hosted worker does not have (noise cancellation is a LiveKit Cloud filter);
- the feature applies to some callers only (voicemail detection: SIP callers) or some providers only
  (a Deepgram Aura voice speaks one language);
- a setting whose switch is off (`dtmf_max_digits` without `dtmf_enabled`), so it does nothing.
"""

from __future__ import annotations

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.providers import OPENAI_STT_LANGUAGE_LISTS, OPENAI_STT_MODEL, PROVIDERS
from pipelines.validate import PipelineProblem

# field prefix -> (the switch, what turns it on); a field set explicitly while its switch is off does nothing
_SWITCHED: tuple[tuple[str, str, str], ...] = (
    ("background_audio_", "background_audio_enabled", "background_audio_enabled is false"),
    ("dtmf_", "dtmf_enabled", "dtmf_enabled is false"),
    ("voicemail_", "voicemail_detection_mode", "voicemail_detection_mode is off"),
    ("multilingual_languages", "multilingual_enabled", "multilingual_enabled is false"),
)


def _switch_on(config: VoicePipelineConfig, switch: str) -> bool:
    value = getattr(config, switch)
    return value != "off" if isinstance(value, str) else bool(value)


def _switched_off(config: VoicePipelineConfig) -> list[PipelineProblem]:
    warnings = []
    for name in sorted(config.model_fields_set):
        for prefix, switch, why in _SWITCHED:
            if name.startswith(prefix) and name != switch and not _switch_on(config, switch):
                warnings.append(PipelineProblem(name, f"has no effect: {why}"))
    if not config.silence_timeout_ms:
        for name in ("silence_reminder_mode", "silence_reminder_message", "silence_reminder_count"):
            if name in config.model_fields_set:
                warnings.append(PipelineProblem(name, "has no effect: silence_timeout_ms is off (0 or null)"))
    if not config.interruptions_enabled:
        for name in ("interruption_hard_phrases", "interruption_trigger_phrases"):
            if getattr(config, name):
                warnings.append(
                    PipelineProblem(
                        name,
                        "has no effect: with interruptions_enabled false livekit drops the caller's audio while "
                        "the agent speaks, so no phrase is heard",
                    )
                )
    if config.interruption_trigger_phrases and "interruption_min_words" in config.model_fields_set:
        warnings.append(
            PipelineProblem(
                "interruption_min_words",
                "has no effect: with interruption_trigger_phrases only those phrases (and the hard phrases) interrupt",
            )
        )
    return warnings


def _multilingual(config: VoicePipelineConfig) -> list[PipelineProblem]:
    if not config.multilingual_enabled:
        return []
    warnings = []
    asked = set(config.multilingual_languages)
    for index, entry in enumerate(config.stt_chain):
        provider = PROVIDERS.get(entry.provider)
        if provider is None or entry.language:
            continue
        supported = provider.multilingual_stt_languages
        outside = sorted(code for code in asked if supported is not None and code.split("-")[0] not in supported)
        if outside:
            warnings.append(
                PipelineProblem(
                    "multilingual_languages",
                    f"stt_chain[{index}] ({entry.provider}) transcribes a multilingual call in "
                    f"{', '.join(sorted(supported or ()))} only, not {', '.join(outside)}",
                )
            )
        model = entry.model or OPENAI_STT_MODEL
        if asked and entry.provider.startswith("openai") and not model.startswith(OPENAI_STT_LANGUAGE_LISTS):
            warnings.append(
                PipelineProblem(
                    "multilingual_languages",
                    f"stt_chain[{index}] ({model}) takes no list of languages: it detects whatever is spoken",
                )
            )
    for index, voice in enumerate(config.tts_chain):
        provider = PROVIDERS.get(voice.provider)
        if provider is not None and not provider.multilingual_tts:
            warnings.append(
                PipelineProblem(
                    f"tts_chain[{index}].provider",
                    f"a {voice.provider} voice speaks the one language of its model: replies in another language "
                    "will be read with the wrong accent",
                )
            )
    return warnings


def pipeline_warnings(config: VoicePipelineConfig, *, where: str) -> list[PipelineProblem]:
    """Every warning, each with its dotted field path under `where`."""
    warnings = [*_switched_off(config), *_multilingual(config)]
    if config.noise_cancellation_enabled:
        warnings.append(
            PipelineProblem(
                "noise_cancellation_enabled",
                "not applied: LiveKit's noise cancellation (BVC) is a LiveKit Cloud filter "
                "(livekit-plugins-noise-cancellation) that this self-hosted worker does not ship; "
                "calls run without it",
            )
        )
    if config.voicemail_detection_mode == "leave_message":
        warnings.append(
            PipelineProblem(
                "voicemail_detection_mode",
                "applies to SIP callers only (a phone line LiveKit SIP bridges); web callers are never screened",
            )
        )
        if not config.voicemail_message:
            warnings.append(
                PipelineProblem("voicemail_message", "not set: on a voicemail the agent hangs up without a message")
            )
    if config.turn_analyzer_params is not None:
        warnings.append(
            PipelineProblem(
                "turn_analyzer_params",
                "not applied: smart-turn-v3 is the platform's end-of-turn model; this worker's is livekit's "
                "(turn_detection), tuned by endpointing_min_delay_ms / endpointing_max_delay_ms and local_vad_params",
            )
        )
    if "min_volume" in config.local_vad_params.model_fields_set:
        warnings.append(
            PipelineProblem(
                "local_vad_params.min_volume",
                "not applied: Silero judges speech by probability (local_vad_params.confidence); "
                "it has no loudness gate",
            )
        )
    prefix = f"{where}." if where else ""
    return [PipelineProblem(prefix + w.field, w.reason) for w in warnings]
