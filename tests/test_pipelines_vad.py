"""LocalVADParams -> Silero options, the endpointing rule for the VAD's minimum silence, and the process's
one native Silero model serving several calls' VADs with their own thresholds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import inference
from livekit.agents import vad as agents_vad

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.turn_handling import TURN_DETECTOR_MIN_SILENCE_S, turn_detector_supports, vad_min_silence_s
from pipelines.vad import SharedVAD, SileroOptions, silero_options
from tests.doubles.wav_fixtures import require_espeak, synthesize_speech


@pytest.mark.parametrize(
    ("stop_secs", "min_delay_ms", "turn_detection", "expected"),
    [
        (0.5, 450, "vad", 0.45),  # the VAD would hold a 450 ms turn for 500 ms: capped
        (0.3, 700, "vad", 0.3),  # shorter VAD silence only splits speech; the delay still ends the turn
        (0.5, 500, "stt", 0.5),
        (0.1, 100, "turn_detector", TURN_DETECTOR_MIN_SILENCE_S),  # livekit's floor for the detector
        (1.0, 600, "turn_detector", 0.6),
    ],
)
def test_vad_min_silence_rule(stop_secs, min_delay_ms, turn_detection, expected) -> None:
    config = VoicePipelineConfig(
        local_vad_params={"stop_secs": stop_secs},
        endpointing_min_delay_ms=min_delay_ms,
        turn_detection=turn_detection,
    )
    assert vad_min_silence_s(config) == pytest.approx(expected)


def test_local_vad_params_mapping() -> None:
    config = VoicePipelineConfig(
        local_vad_params={"confidence": 0.8, "start_secs": 0.25, "stop_secs": 0.6, "min_volume": 0.1},
        endpointing_min_delay_ms=800,
    )
    assert silero_options(config) == SileroOptions(
        activation_threshold=0.8,
        deactivation_threshold=pytest.approx(0.65),
        min_speech_duration=0.25,
        min_silence_duration=0.6,
    )
    # a confidence at the bottom of the range still leaves a positive exit threshold (Silero requires it)
    low = VoicePipelineConfig(local_vad_params={"confidence": 0.05})
    assert silero_options(low).deactivation_threshold == 0.01


def test_turn_detector_languages() -> None:
    assert turn_detector_supports("en")
    assert turn_detector_supports("en-GB")
    assert turn_detector_supports("de")
    assert not turn_detector_supports("sv")
    assert not turn_detector_supports(None)


def _frames(pcm: np.ndarray, sample_rate: int) -> list[rtc.AudioFrame]:
    step = sample_rate // 100
    return [
        rtc.AudioFrame(
            data=pcm[i : i + step].tobytes(), sample_rate=sample_rate, num_channels=1, samples_per_channel=step
        )
        for i in range(0, len(pcm) - step + 1, step)
    ]


async def _speech_starts(vad: agents_vad.VAD, frames: list[rtc.AudioFrame]) -> int:
    stream = vad.stream()
    for frame in frames:
        stream.push_frame(frame)
    stream.end_input()
    starts = 0
    async for event in stream:
        if event.type == agents_vad.VADEventType.START_OF_SPEECH:
            starts += 1
    await stream.aclose()
    return starts


async def test_one_model_serves_calls_with_their_own_thresholds(tmp_path: Path) -> None:
    require_espeak()
    clip = synthesize_speech("Hello, I am calling about my invoice.", cache_dir=tmp_path)
    frames = _frames(np.concatenate([np.zeros(8000, np.int16), clip.pcm, np.zeros(16000, np.int16)]), 16000)

    shared = SharedVAD.load()
    listening = shared.for_pipeline(VoicePipelineConfig(local_vad_params={"confidence": 0.5}))
    # a threshold no speech probability reaches: this call's VAD must hear nothing
    deaf = shared.for_pipeline(VoicePipelineConfig(local_vad_params={"confidence": 1.0}))
    assert isinstance(listening, inference.VAD) and isinstance(deaf, inference.VAD)
    assert listening is not deaf

    heard, not_heard = await asyncio.gather(_speech_starts(listening, frames), _speech_starts(deaf, frames))
    assert heard >= 1
    assert not_heard == 0
