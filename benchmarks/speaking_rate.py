"""livekit's speaking-rate estimate against pipelines/speaking_rate.py's batched one, on one core, no network.

`python -m benchmarks.speaking_rate`: the CPU one estimate costs (livekit computes one per 100 ms of agent audio,
over the last second, on the call's event loop) at the TTS sample rates, and that both give the same number."""

from __future__ import annotations

import os
import time

import numpy as np
from livekit.agents.voice.transcription._speaking_rate import SpeakingRateStream

from pipelines import speaking_rate

LIVEKIT_STFT = SpeakingRateStream._stft
LIVEKIT_FLUX = SpeakingRateStream._spectral_flux


class _Livekit:
    """What livekit's flux needs of its stream: its own STFT."""

    def _stft(self, audio: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
        return LIVEKIT_STFT(None, audio, frame_length, hop_length)  # type: ignore[arg-type]


def cpu_ms(fn: object, audio: np.ndarray, rate: int, runs: int) -> float:
    started = time.process_time()
    for _ in range(runs):
        fn(audio, rate)  # type: ignore[operator]
    return (time.process_time() - started) / runs * 1000


def main() -> None:
    rng = np.random.default_rng(1)
    print(f"load average {os.getloadavg()[0]:.2f}; CPU ms per estimate (one per 100 ms of agent audio)")
    print("| sample rate | livekit 1.8.9 | batched | same estimate |\n|---|---|---|---|")
    livekit = _Livekit()
    for rate in (16_000, 24_000, 48_000):
        audio = (0.1 * rng.standard_normal(rate)).astype(np.float32)
        before = cpu_ms(lambda a, r: LIVEKIT_FLUX(livekit, a, r), audio, rate, 50)  # type: ignore[arg-type]
        after = cpu_ms(speaking_rate.spectral_flux, audio, rate, 50)
        same = LIVEKIT_FLUX(livekit, audio, rate) == speaking_rate.spectral_flux(audio, rate)  # type: ignore[arg-type]
        print(f"| {rate} Hz | {before:.2f} ms | {after:.2f} ms | {same} |")


if __name__ == "__main__":
    main()
