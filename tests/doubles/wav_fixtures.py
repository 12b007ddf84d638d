"""Caller-speech fixtures synthesised locally with espeak-ng, never downloaded.

Clips are mono int16 numpy arrays at 16 kHz or 48 kHz. Synthesised phrases are cached as WAV
files in a directory the caller chooses (normally a pytest tmp dir), keyed by everything that
changes the audio, so repeated phrases cost one espeak-ng run.

espeak-ng is a Debian package (`apt-get install -y espeak-ng`); when it is missing, tests that
need speech skip through `require_espeak()` instead of failing.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from livekit import rtc

__all__ = [
    "ESPEAK_MISSING_REASON",
    "Clip",
    "clip_from_wav",
    "compose",
    "espeak_available",
    "read_wav",
    "require_espeak",
    "resample",
    "silence",
    "speech_pause_speech",
    "synthesize_speech",
    "trim_silence",
    "write_wav",
]

SUPPORTED_RATES = (16000, 48000)
ESPEAK_MISSING_REASON = (
    "espeak-ng is not installed; speech fixtures are synthesised locally (install with: apt-get install -y espeak-ng)"
)


@dataclass(frozen=True)
class Clip:
    """Mono int16 audio plus where the speech in it lies (seconds from the clip start) and,
    when known, what each span says (`texts` runs parallel to `speech_spans`)."""

    pcm: np.ndarray
    sample_rate: int
    speech_spans: tuple[tuple[float, float], ...] = ()
    texts: tuple[str, ...] = ()

    @property
    def duration(self) -> float:
        return len(self.pcm) / self.sample_rate


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak() -> None:
    """Skip the calling test, with the reason spelled out, when espeak-ng is absent."""
    if not espeak_available():
        import pytest

        pytest.skip(ESPEAK_MISSING_REASON)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the rate; multi-channel files are averaged down."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels = wav.getnchannels()
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return data.copy(), rate


def write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(np.ascontiguousarray(pcm, dtype=np.int16).tobytes())
    return path


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return pcm.astype(np.int16, copy=True)
    resampler = rtc.AudioResampler(from_rate, to_rate, num_channels=1, quality=rtc.AudioResamplerQuality.HIGH)
    frame = rtc.AudioFrame(
        data=np.ascontiguousarray(pcm, dtype=np.int16).tobytes(),
        sample_rate=from_rate,
        num_channels=1,
        samples_per_channel=len(pcm),
    )
    out = [*resampler.push(frame), *resampler.flush()]
    if not out:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in out]).copy()


def trim_silence(pcm: np.ndarray, sample_rate: int, *, threshold: int = 300) -> np.ndarray:
    """Cut the leading/trailing near-silence espeak-ng pads with, so a clip's speech span
    starts and ends where the voice does (this is what end-of-speech timing is measured from)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    if loud.size == 0:
        return pcm[:0].copy()
    margin = sample_rate // 100
    start = max(int(loud[0]) - margin, 0)
    end = min(int(loud[-1]) + margin + 1, len(pcm))
    return pcm[start:end].copy()


def synthesize_speech(
    text: str,
    *,
    cache_dir: Path,
    sample_rate: int = 16000,
    voice: str = "en-us",
    words_per_minute: int = 160,
) -> Clip:
    """Speak `text` with espeak-ng and return it trimmed, resampled and cached."""
    if sample_rate not in SUPPORTED_RATES:
        raise ValueError(f"sample_rate must be one of {SUPPORTED_RATES}, got {sample_rate}")
    key = hashlib.sha256(f"{voice}|{words_per_minute}|{sample_rate}|{text}".encode()).hexdigest()
    cached = Path(cache_dir) / f"espeak-{key[:24]}.wav"
    if cached.exists():
        pcm, rate = read_wav(cached)
        return Clip(pcm=pcm, sample_rate=rate, speech_spans=((0.0, len(pcm) / rate),), texts=(text,))

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(ESPEAK_MISSING_REASON)
    raw = cached.with_suffix(".raw.wav")
    raw.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [exe, "-v", voice, "-s", str(words_per_minute), "-w", str(raw), "--", text],
        check=True,
        capture_output=True,
        timeout=30,
    )
    pcm, rate = read_wav(raw)
    raw.unlink()
    pcm = resample(trim_silence(pcm, rate), rate, sample_rate)
    write_wav(cached, pcm, sample_rate)
    return Clip(
        pcm=pcm,
        sample_rate=sample_rate,
        speech_spans=((0.0, len(pcm) / sample_rate),),
        texts=(text,),
    )


def clip_from_wav(path: Path, *, speech_spans: Sequence[tuple[float, float]] | None = None) -> Clip:
    """A recorded WAV as a clip; without explicit spans the whole file counts as one utterance."""
    pcm, rate = read_wav(path)
    spans = tuple(speech_spans) if speech_spans is not None else ((0.0, len(pcm) / rate),)
    return Clip(pcm=pcm, sample_rate=rate, speech_spans=spans)


def silence(seconds: float, sample_rate: int) -> Clip:
    return Clip(pcm=np.zeros(round(seconds * sample_rate), dtype=np.int16), sample_rate=sample_rate)


def compose(parts: Sequence[Clip | float], *, sample_rate: int) -> Clip:
    """Join clips and pauses (a float is that many seconds of silence), keeping speech spans."""
    chunks: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    texts: list[str] = []
    offset = 0.0
    for part in parts:
        clip = silence(part, sample_rate) if isinstance(part, (int, float)) else part
        if clip.sample_rate != sample_rate:
            raise ValueError(f"clip at {clip.sample_rate} Hz in a {sample_rate} Hz composition")
        spans.extend((offset + start, offset + end) for start, end in clip.speech_spans)
        texts.extend(clip.texts or [""] * len(clip.speech_spans))
        chunks.append(clip.pcm)
        offset += clip.duration
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return Clip(
        pcm=pcm.astype(np.int16, copy=False),
        sample_rate=sample_rate,
        speech_spans=tuple(spans),
        texts=tuple(texts),
    )


def speech_pause_speech(
    first: str,
    second: str,
    *,
    cache_dir: Path,
    pause_s: float = 1.0,
    sample_rate: int = 16000,
) -> Clip:
    """The classic mid-turn hesitation: a phrase, a pause, another phrase."""
    return compose(
        [
            synthesize_speech(first, cache_dir=cache_dir, sample_rate=sample_rate),
            pause_s,
            synthesize_speech(second, cache_dir=cache_dir, sample_rate=sample_rate),
        ],
        sample_rate=sample_rate,
    )
