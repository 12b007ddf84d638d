"""pipelines/speaking_rate.py computes livekit's speaking-rate estimate exactly as livekit does, only batched."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from livekit.agents.voice.transcription._speaking_rate import SpeakingRateStream

from pipelines import speaking_rate

# livekit's own methods, kept before any test installs the batched ones
LIVEKIT_STFT = SpeakingRateStream._stft
LIVEKIT_FLUX = SpeakingRateStream._spectral_flux
# what livekit's flux needs of its stream: its own STFT (neither method reads anything else of the stream)
LIVEKIT = SimpleNamespace(_stft=lambda audio, frame_length, hop: LIVEKIT_STFT(None, audio, frame_length, hop))  # type: ignore[arg-type]


def _signals(sample_rate: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    t = np.arange(sample_rate) / sample_rate
    # syllable-like bursts: a 180 Hz voice with harmonics, gated at 4 Hz, plus a little noise
    voiced = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6)) * (np.sin(2 * np.pi * 4 * t) > 0)
    return {
        "speech-like": (0.2 * voiced + 0.01 * rng.standard_normal(sample_rate)).astype(np.float32),
        "noise": (0.1 * rng.standard_normal(sample_rate)).astype(np.float32),
        # the shortest livekit passes: the rest of a segment, at least half its 1 s window
        "half window": (0.1 * rng.standard_normal(sample_rate // 2)).astype(np.float32),
    }


@pytest.mark.parametrize("sample_rate", [16_000, 24_000, 48_000])
def test_the_estimate_is_livekits(sample_rate: int) -> None:
    for name, audio in _signals(sample_rate).items():
        expected = LIVEKIT_FLUX(LIVEKIT, audio, sample_rate)  # type: ignore[arg-type]
        assert speaking_rate.spectral_flux(audio, sample_rate) == pytest.approx(expected, rel=1e-9, abs=1e-12), name


def test_the_spectra_are_livekits() -> None:
    audio = _signals(24_000)["speech-like"]
    expected = LIVEKIT_STFT(None, audio, 600, 300)  # type: ignore[arg-type]
    found = speaking_rate.stft(audio, 600, 300)
    assert found.shape == expected.shape
    np.testing.assert_allclose(found, expected, rtol=1e-9, atol=1e-12)


def test_install_puts_the_batched_code_in_place_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SpeakingRateStream, "_stft", LIVEKIT_STFT)
    monkeypatch.setattr(SpeakingRateStream, "_spectral_flux", LIVEKIT_FLUX)
    monkeypatch.setattr(speaking_rate, "_installed", False)
    assert speaking_rate.install() and speaking_rate.install()
    audio = _signals(24_000)["speech-like"]
    stream = SpeakingRateStream.__new__(SpeakingRateStream)
    assert stream._spectral_flux(audio, 24_000) == pytest.approx(LIVEKIT_FLUX(LIVEKIT, audio, 24_000), rel=1e-9)  # type: ignore[arg-type]
    assert SpeakingRateStream._spectral_flux is not LIVEKIT_FLUX


def test_the_stock_switch_and_a_changed_livekit_leave_livekit_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SpeakingRateStream, "_stft", LIVEKIT_STFT)
    monkeypatch.setattr(SpeakingRateStream, "_spectral_flux", LIVEKIT_FLUX)
    monkeypatch.setattr(speaking_rate, "_installed", False)
    monkeypatch.setenv(speaking_rate.STOCK_ENV, "1")
    assert not speaking_rate.install()
    assert SpeakingRateStream._spectral_flux is LIVEKIT_FLUX
    monkeypatch.delenv(speaking_rate.STOCK_ENV)
    monkeypatch.setattr(SpeakingRateStream, "_stft", lambda self, audio: None)  # a reworked signature
    assert not speaking_rate.install()
    assert SpeakingRateStream._spectral_flux is LIVEKIT_FLUX
