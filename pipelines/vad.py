"""Silero VAD: the ONNX model loaded once per process, one `silero.VAD` object per call on top of it.

`silero.VAD.load()` opens a new ONNX Runtime session each time. A `silero.VAD` is only a holder of that
session plus options; every stream it opens gets its own `OnnxModel` (the recurrent state), and ONNX
Runtime allows concurrent `run()` calls on one session, so calls can share the session and still keep
their own thresholds. One VAD object per call (not one shared object) matters too: every AgentSession
subscribes to its VAD's metrics events, and a shared VAD fans each call's events out to every session
in the process (see /work/shared/notes/baseline-stock-livekit-agents.md).

Mapping of the platform's `LocalVADParams` (docs/pipeline-config.md):
- confidence  -> activation_threshold (deactivation stays livekit's activation - 0.15, the hysteresis
  that keeps one dip in probability from splitting an utterance)
- start_secs  -> min_speech_duration
- stop_secs   -> min_silence_duration, capped by the endpointing delay (`turn_handling.vad_min_silence_s`)
- min_volume  -> not mapped: Silero has no loudness gate, it judges speech by probability alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime  # type: ignore[import-untyped]
from livekit.plugins import silero
from livekit.plugins.silero import onnx_model
from livekit.plugins.silero.vad import _VADOptions

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.turn_handling import vad_min_silence_s

SAMPLE_RATE = 16000
# livekit's defaults for what the config does not say
PREFIX_PADDING_S = 0.5
MAX_BUFFERED_SPEECH_S = 60.0
DEACTIVATION_GAP = 0.15


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

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self._session = session

    @classmethod
    def load(cls, *, force_cpu: bool = True) -> SharedVAD:
        return cls(onnx_model.new_inference_session(force_cpu))

    @property
    def onnx_session(self) -> onnxruntime.InferenceSession:
        return self._session

    def for_pipeline(self, config: VoicePipelineConfig) -> silero.VAD:
        return self.make(silero_options(config))

    def make(self, options: SileroOptions) -> silero.VAD:
        # `silero.VAD(session=, opts=)` is the constructor `VAD.load()` itself ends with; building it
        # directly is the only way to reuse a session.
        return silero.VAD(
            session=self._session,
            opts=_VADOptions(
                min_speech_duration=options.min_speech_duration,
                min_silence_duration=options.min_silence_duration,
                prefix_padding_duration=PREFIX_PADDING_S,
                max_buffered_speech=MAX_BUFFERED_SPEECH_S,
                activation_threshold=options.activation_threshold,
                deactivation_threshold=options.deactivation_threshold,
                sample_rate=SAMPLE_RATE,
            ),
        )
