"""How the caller interrupts the agent, beyond livekit's own rules (`interruptions_enabled`, `interruption_min_words`,
`interruption_min_duration_ms`, mapped in pipelines/turn_handling.py):

- `interruption_hard_phrases`: a transcript (interim or final) holding one of them stops the agent's speech at
  once, even when the caller said fewer words than `interruption_min_words` or spoke for less than
  `interruption_min_duration_ms`.
- `interruption_trigger_phrases`: when set, only speech holding one of them (in its final transcript) interrupts;
  other speech over the agent does not (livekit's word gate is raised out of reach, and the phrase watcher does
  the interrupting). The hard phrases still interrupt.
- `interruption_backoff_ms`: the agent's next utterance starts at least this long after its previous one ended,
  finished or cut off (livekit's `min_consecutive_speech_delay`); after a barge-in that is the room the caller
  gets before the agent talks again.
- `interruption_final_transcript_grace_ms`: when speech over the agent pauses it, how long after the caller
  stops livekit waits for a final transcript before it calls the interruption false and resumes the agent
  (livekit's `false_interruption_timeout`).

Neither kind of phrase cuts speech the agent marks uninterruptible (the AI disclosure); with
`interruptions_enabled: false` livekit drops the caller's audio while the agent speaks, so no phrase is heard
(`voice-worker check` warns). Phrases match case-insensitively on whole words, punctuation ignored:
"hold on" matches "Hold on, please" but not "household on".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice.events import UserInputTranscribedEvent
from livekit.agents.voice.turn import InterruptionOptions

from catalog.pipeline_config import VoicePipelineConfig

log = logging.getLogger("voice_worker.pipelines.interruptions")

# livekit interrupts on audio only once the transcript has `min_words` words; with trigger phrases set, audio
# alone must never interrupt, so the gate is put beyond any utterance and the phrase watcher interrupts instead
TRIGGER_ONLY_MIN_WORDS = 1_000_000

_NOT_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Lower case, words separated by single spaces, punctuation dropped, padded for whole-word search."""
    return f" {_NOT_WORD.sub(' ', text.casefold()).strip()} "


def matching_phrase(transcript: str, phrases: Sequence[str]) -> str | None:
    heard = normalise(transcript)
    return next((p for p in phrases if normalise(p).strip() and normalise(p) in heard), None)


def interruption_options(config: VoicePipelineConfig) -> InterruptionOptions:
    return {
        "enabled": config.interruptions_enabled,
        # "adaptive" is a LiveKit Cloud model; a self-hosted worker interrupts on the VAD.
        "mode": "vad",
        "min_words": TRIGGER_ONLY_MIN_WORDS if config.interruption_trigger_phrases else config.interruption_min_words,
        "min_duration": config.interruption_min_duration_ms / 1000,
        "false_interruption_timeout": config.interruption_final_transcript_grace_ms / 1000,
    }


def session_options(config: VoicePipelineConfig) -> dict[str, Any]:
    """`AgentSession(...)` keyword arguments of the interruption fields."""
    return {"min_consecutive_speech_delay": config.interruption_backoff_ms / 1000}


def attach_phrase_interruptions(session: AgentSession[Any], config: VoicePipelineConfig) -> Callable[[], None] | None:
    """Watch the caller's transcripts for the config's phrases; returns the detach function (None: no phrases)."""
    hard, trigger = config.interruption_hard_phrases, config.interruption_trigger_phrases
    if not hard and not trigger:
        return None

    def on_transcript(ev: UserInputTranscribedEvent) -> None:
        phrase = matching_phrase(ev.transcript, hard) or (
            matching_phrase(ev.transcript, trigger) if ev.is_final else None
        )
        speech = session.current_speech
        if phrase is None or speech is None or speech.interrupted:
            return
        if not speech.allow_interruptions:
            return  # the disclosure and other speech marked uninterruptible play out
        log.info("caller said an interruption phrase; the agent stops speaking")
        session.interrupt()

    session.on("user_input_transcribed", on_transcript)
    return lambda: session.off("user_input_transcribed", on_transcript)
