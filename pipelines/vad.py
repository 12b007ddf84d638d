"""Silero VAD: livekit's native Silero (livekit-local-inference) loaded once per process, one VAD object per call.

`livekit.agents.inference.VAD` runs Silero in livekit-local-inference's native library: the model is a
process-wide singleton (livekit's own warm-up loads it in the forkserver and in a thread executor's process),
and every stream keeps its own recurrent state and runs inference on a worker thread of its own, off the
event loop. It costs less CPU per call than the ONNX Runtime plugin (`livekit.plugins.silero`); the density
benchmark (`--variant tuned_plugin_vad`) measures the difference.

One VAD object per call (not one shared object) matters: every AgentSession subscribes to its VAD's metrics
events, and a shared VAD fans each call's events out to every session in the process (the platform's notes
on stock livekit-agents 1.8.9 found this). Each call's object also carries its own thresholds.

Mapping of the platform's `LocalVADParams` (docs/pipeline-config.md):
- confidence  -> activation_threshold (deactivation stays livekit's activation - 0.15, the hysteresis
  that keeps one dip in probability from splitting an utterance)
- start_secs  -> min_speech_duration
- stop_secs   -> min_silence_duration, capped by the endpointing delay (`turn_handling.vad_min_silence_s`)
- min_volume  -> not mapped: Silero has no loudness gate, it judges speech by probability alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit import local_inference
from livekit.agents import inference

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.provider_data import PluginSignature, checked_options
from pipelines.turn_handling import vad_min_silence_s

# livekit's defaults for what the config does not say
PREFIX_PADDING_S = 0.5
MAX_BUFFERED_SPEECH_S = 60.0
DEACTIVATION_GAP = 0.15


# `vad_provider_data` may set the rest of `inference.VAD`'s options (prefix padding, buffered speech, the exit
# threshold); these come from the config's own fields.
VAD_SIGNATURE = PluginSignature(
    inference.VAD,
    {
        "model": "the worker (Silero)",
        "activation_threshold": "local_vad_params.confidence",
        "min_speech_duration": "local_vad_params.start_secs",
        "min_silence_duration": "local_vad_params.stop_secs and endpointing_min_delay_ms",
        "executor": "livekit (its inference thread)",
    },
)


@dataclass(frozen=True)
class SileroOptions:
    activation_threshold: float
    deactivation_threshold: float
    min_speech_duration: float
    min_silence_duration: float


def silero_options(config: VoicePipelineConfig) -> SileroOptions:
    params = config.local_vad_params
    return SileroOptions(
        activation_threshold=params.confidence,
        deactivation_threshold=max(params.confidence - DEACTIVATION_GAP, 0.01),
        min_speech_duration=params.start_secs,
        min_silence_duration=vad_min_silence_s(config),
    )


class SharedVAD:
    """Call `SharedVAD.load()` in the worker's setup function; `for_pipeline()` once per call."""

    @classmethod
    def load(cls) -> SharedVAD:
        # a no-op when livekit's warm-up has loaded the model already; otherwise the ~25 ms load happens here,
        # in the setup function, not in a caller's first turn
        local_inference.init_vad()
        return cls()

    def for_pipeline(self, config: VoicePipelineConfig) -> inference.VAD:
        return self.make(silero_options(config), provider_data=checked_options(config.vad_provider_data, VAD_SIGNATURE))

    def make(self, options: SileroOptions, provider_data: dict[str, object] | None = None) -> inference.VAD:
        kwargs: dict[str, object] = {
            "prefix_padding_duration": PREFIX_PADDING_S,
            "max_buffered_speech": MAX_BUFFERED_SPEECH_S,
            "deactivation_threshold": options.deactivation_threshold,
            **(provider_data or {}),
        }
        return inference.VAD(
            model="silero",
            min_speech_duration=options.min_speech_duration,
            min_silence_duration=options.min_silence_duration,
            activation_threshold=options.activation_threshold,
            **kwargs,  # type: ignore[arg-type]  # checked against inference.VAD's annotations by checked_options
        )
