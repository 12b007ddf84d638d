"""The simulated caller's side of the line in the real-server suite: one Deepgram double for its TTS and its STT.

`voice-worker simulate --mode voice` builds the caller's voice from a scenario's `caller.voice` (the suite points it
here), and the worker's own providers are the usual doubles (tests/e2e/providers.py). The two directions:

- the caller speaks: this double's `speak` renders the line as espeak-ng speech, which the worker's Silero VAD
  takes for a voice (a tone would not be), and scripts the worker's Deepgram double with the line, so the agent's
  STT hears exactly what the caller said;
- the caller listens: this double's `listen` transcribes each stretch of agent audio as the text the agent's TTS
  synthesised since the last one (the worker-side doubles record every synthesis: OpenAI speech requests and
  Deepgram's `spoken_texts`), so what the caller hears is what the agent said.

Both run on the provider doubles' event loop, so they read and script the worker-side doubles directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.doubles.deepgram_server import DeepgramServerDouble, Utterance
from tests.doubles.openai_server import SPEECH_PATH
from tests.doubles.wav_fixtures import resample, synthesize_speech
from tests.e2e.providers import ProviderDoubles

ESPEAK_RATE = 48_000
# espeak pauses at punctuation for longer than the agents' VAD silence: one spoken line must stay one utterance
_PUNCTUATION = re.compile(r"[^\w\s']+")


class CallerLineDouble(DeepgramServerDouble):
    def __init__(
        self,
        *,
        speech_dir: Path,
        agent_speech: Callable[[], list[list[str]]],
        agent_hears: Callable[[str], None],
    ) -> None:
        super().__init__(default_transcript="")
        self._speech_dir = speech_dir
        # each worker-side TTS double's syntheses so far, one list per double, and how far the caller has heard each
        self._agent_speech = agent_speech
        self._heard_upto: list[int] = []
        self._agent_hears = agent_hears
        # what the caller said, in order (each line the caller's TTS rendered)
        self.caller_lines: list[str] = []

    def _render(self, text: str, sample_rate: int) -> bytes:
        self.caller_lines.append(text)
        self._agent_hears(text)
        spoken = synthesize_speech(_PUNCTUATION.sub(" ", text), cache_dir=self._speech_dir, sample_rate=ESPEAK_RATE)
        return resample(spoken.pcm, ESPEAK_RATE, sample_rate).astype("<i2").tobytes()

    def _new_agent_speech(self, *, take: bool) -> str:
        sources = self._agent_speech()
        self._heard_upto += [0] * (len(sources) - len(self._heard_upto))
        new: list[str] = []
        for index, texts in enumerate(sources):
            new += texts[self._heard_upto[index] :]
            if take:
                self._heard_upto[index] = len(texts)
        return " ".join(new)

    def next_utterance(self) -> Utterance:
        # one stretch of agent audio may carry several syntheses (sentences played back to back)
        return Utterance(self._new_agent_speech(take=True))

    def peek_utterance(self) -> Utterance:
        return Utterance(self._new_agent_speech(take=False))


def caller_line(doubles: ProviderDoubles, speech_dir: Path) -> CallerLineDouble:
    """A started caller-line double wired to `doubles` (call from outside the doubles' loop)."""

    def agent_speech() -> list[list[str]]:
        openai = [str(r.body.get("input", "")) for r in doubles.openai.requests_for(path=SPEECH_PATH)]
        return [openai, list(doubles.deepgram.spoken_texts)]

    line = CallerLineDouble(
        speech_dir=speech_dir, agent_speech=agent_speech, agent_hears=doubles.deepgram.script_transcripts
    )
    doubles.run(line.start())
    return line
