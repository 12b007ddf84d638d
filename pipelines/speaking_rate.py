"""livekit's transcript synchronizer, its speaking-rate estimate computed in a few numpy calls instead of ~80.

Every call's agent speech passes through livekit's `TranscriptSynchronizer`, which paces the transcript the caller
sees to the audio they hear. Without word timestamps from the TTS (Deepgram's have none) it estimates how fast the
agent speaks from the audio itself: every 100 ms of TTS audio, a short-time Fourier transform of the last second
(25 ms frames, 50 % overlap) and the spectral flux between consecutive frames. livekit 1.8.9 computes that with a
Python loop of one `np.fft.rfft` per frame and another loop for the flux: ~11 ms of a core per 100 ms of 24 kHz
audio, on the call's event loop (docs/performance.md: the largest blocker of the worker's loop under load).

`install()` replaces those two methods with the same computation done over all frames at once (one batched
`rfft`, one `diff`): the same frames, window, scaling and flux, so the same estimate to float rounding
(tests/test_pipelines_speaking_rate.py compares it with livekit's own code on speech and noise), at a tenth of the
cost. Nothing else of the synchronizer changes, and the transcript keeps its pacing.

It patches a private method of livekit-agents, one of voice-worker's two reaches into its internals (the other is
worker/livekit_adapter.py): `install()` checks that the class still has the methods it replaces with the signatures
it expects and otherwise leaves livekit alone (logged), so a livekit upgrade that reworks the synchronizer costs
speed, never behaviour; tests/test_worker_livekit_adapter.py fails loudly on such an upgrade all the same.
VOICE_WORKER_STOCK_SPEAKING_RATE=1 keeps livekit's own code (the benchmark's before/after,
benchmarks/real_server.py --profile). Move to public API when livekit-agents offers it: a speaking-rate detector
passed to `TranscriptSynchronizer` (today its private `_TextSyncOptions.speaking_rate_detector`, always livekit's
own `SpeakingRateDetector`), or a faster stock estimate.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from typing import Any

import numpy as np
from livekit.agents.voice.transcription import _speaking_rate

log = logging.getLogger("voice_worker.speaking_rate")

STOCK_ENV = "VOICE_WORKER_STOCK_SPEAKING_RATE"
_EXPECTED = {
    "_stft": ["self", "audio", "frame_length", "hop_length"],
    "_spectral_flux": ["self", "audio", "sample_rate"],
}
_lock = threading.Lock()
_installed = False
_windows: dict[int, tuple[np.ndarray[Any, np.dtype[np.float64]], float]] = {}


def _window(frame_length: int) -> tuple[np.ndarray[Any, np.dtype[np.float64]], float]:
    """livekit's Hann window and its scale factor, computed once per frame length (it recomputes them per call)."""
    found = _windows.get(frame_length)
    if found is None:
        window = np.hanning(frame_length)
        found = _windows[frame_length] = (window, 1.0 / np.sqrt(np.sum(window**2)))
    return found


def stft(
    audio: np.ndarray[Any, np.dtype[np.float32]], frame_length: int, hop_length: int
) -> np.ndarray[Any, np.dtype[np.complex128]]:
    """livekit's `SpeakingRateStream._stft`, batched: (frame_length // 2 + 1, frames) complex spectra."""
    frames = (len(audio) - frame_length) // hop_length + 1
    if frames <= 0:
        return np.zeros((frame_length // 2 + 1, 0), dtype=np.complex128)
    window, scale = _window(frame_length)
    strided = np.lib.stride_tricks.sliding_window_view(audio, frame_length)[::hop_length][:frames]
    return (np.fft.rfft(strided * window, axis=1) * scale).T


def spectral_flux(audio: np.ndarray[Any, np.dtype[np.float32]], sample_rate: int) -> float:
    """livekit's `SpeakingRateStream._spectral_flux`: the mean L1 change of the magnitude spectrum frame to frame."""
    frame_length = int(sample_rate * 0.025)
    magnitudes = np.abs(stft(audio, frame_length, frame_length // 2))
    if magnitudes.shape[1] < 2:
        return 0.0
    return float(np.mean(np.sum(np.abs(np.diff(magnitudes, axis=1)), axis=0)))


def install() -> bool:
    """Patch livekit's speaking-rate stream once per process; True when the batched code is in place."""
    global _installed
    with _lock:
        if _installed:
            return True
        if os.environ.get(STOCK_ENV) == "1":
            return False
        cls = _speaking_rate.SpeakingRateStream
        for name, params in _EXPECTED.items():
            method = getattr(cls, name, None)
            if method is None or list(inspect.signature(method).parameters) != params:
                log.warning("livekit's speaking-rate stream changed (%s); its own code stays in place", name)
                return False

        def _stft(_self: Any, audio: Any, frame_length: int, hop_length: int) -> Any:
            return stft(audio, frame_length, hop_length)

        def _spectral_flux(_self: Any, audio: Any, sample_rate: int) -> float:
            return spectral_flux(audio, sample_rate)

        # the point of this module (see its docstring); the replacements take what livekit's methods take
        cls._stft = _stft  # type: ignore[method-assign,assignment]
        cls._spectral_flux = _spectral_flux  # type: ignore[method-assign,assignment]
        _installed = True
        return True
