"""When the caller's turn ends: the config's turn-detection fields as livekit-agents `TurnHandlingOptions`,
and the rule that keeps Silero's own end-of-speech decision from overriding the endpointing delay.

livekit-agents starts the endpointing timer at the moment the VAD says speech stopped, back-dated by the
silence the VAD waited for; the turn ends `min_delay` after that moment. But the VAD only reports the
end of speech after its own `min_silence_duration`, so whenever that is longer than `min_delay` the
caller waits for the VAD, not for the delay the config states (measured: Silero's 0.55 s default gates
every turn configured at 0.5 s). Hence the rule, documented in docs/pipeline-config.md:

    VAD min_silence_duration = min(local_vad_params.stop_secs, endpointing_min_delay_ms / 1000)

raised to the turn-detector model's own minimum when `turn_detection` is `turn_detector`.
"""

from __future__ import annotations

from typing import Final

from livekit.agents import LanguageCode, TurnHandlingOptions
from livekit.agents.voice.turn import TurnDetectionMode

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.interruptions import interruption_options

# livekit refuses a VAD whose min_silence_duration is below this when a streaming turn detector runs: the
# detector is asked for a prediction after 200 ms of silence, and livekit wants 50 ms more from the VAD.
# This and the languages below are livekit-agents 1.8.9's (inference.eot, which livekit does not export);
# tests/test_livekit_internals.py compares them with the installed release's.
TURN_DETECTOR_SILENCE_MS = 200
TURN_DETECTOR_MIN_SILENCE_S = (TURN_DETECTOR_SILENCE_MS + 50) / 1000
# The languages the offline model has a threshold of its own for.
TURN_DETECTOR_LANGUAGES: Final = frozenset(
    {"ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "nl", "pt", "tr", "zh"}
)

# The offline model: livekit-local-inference ships its weights inside the wheel. "v1" is the
# LiveKit Cloud model, which a self-hosted worker cannot reach.
TURN_DETECTOR_VERSION: Final = "v1-mini"


def vad_min_silence_s(config: VoicePipelineConfig) -> float:
    silence = min(config.local_vad_params.stop_secs, config.endpointing_min_delay_ms / 1000)
    if config.turn_detection == "turn_detector":
        silence = max(silence, TURN_DETECTOR_MIN_SILENCE_S)
    return silence


def turn_detector_supports(language: str | None) -> bool:
    """Whether the offline turn-detector model is tuned for `language` (has a threshold of its own); for any other
    livekit falls back to English's threshold, which misjudges where turns end."""
    if language is None:
        return False
    return LanguageCode(language).language in TURN_DETECTOR_LANGUAGES


def _turn_detection(config: VoicePipelineConfig) -> TurnDetectionMode:
    if config.turn_detection == "turn_detector":
        from livekit.agents import inference

        # One detector object per call: its streams hold per-call audio; the native model behind them
        # is a process-wide singleton, loaded once.
        return inference.TurnDetector(version=TURN_DETECTOR_VERSION)
    return config.turn_detection


def turn_handling_options(config: VoicePipelineConfig) -> TurnHandlingOptions:
    return TurnHandlingOptions(
        turn_detection=_turn_detection(config),
        endpointing={
            "mode": "fixed",
            "min_delay": config.endpointing_min_delay_ms / 1000,
            "max_delay": config.endpointing_max_delay_ms / 1000,
        },
        interruption=interruption_options(config),
        preemptive_generation={"enabled": config.preemptive_generation},
    )


def prewarm_turn_detector() -> None:
    """Load the offline turn-detector model now (about 100 MB) instead of during the first call."""
    from livekit.local_inference import init_eot

    init_eot()
