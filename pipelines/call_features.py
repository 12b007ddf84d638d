"""The pipeline's behaviours that run beside a call's session, started together after `session.start()` and
before the greeting, closed together when the call ends: voicemail screening (it holds the greeting until the
verdict), interruption phrases, keypad digits, and the background ambience.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, llm

from catalog.pipeline_config import VoicePipelineConfig
from pipelines.background_audio import BackgroundAudio
from pipelines.dtmf import DtmfCollector
from pipelines.interruptions import attach_phrase_interruptions
from pipelines.voicemail import VoicemailScreen

log = logging.getLogger("voice_worker.pipelines.call_features")

# publishing the ambience track is one round trip to the server; a start still pending at the end is dropped
AMBIENCE_START_TIMEOUT_S = 2.0


def caller_of(session: AgentSession[Any], room: rtc.Room | None) -> rtc.Participant | None:
    """The caller the session listens to: its linked participant, else a phone line already in the room."""
    if room is None:
        return None
    linked = session.room_io.linked_participant
    if linked is not None:
        return linked
    return next(
        (p for p in room.remote_participants.values() if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP), None
    )


@dataclass
class CallFeatures:
    voicemail: VoicemailScreen | None = None
    dtmf: DtmfCollector | None = None
    detach_phrases: Callable[[], None] | None = None
    _ambience: asyncio.Task[BackgroundAudio | None] | None = field(default=None, repr=False)

    @classmethod
    async def start(
        cls,
        session: AgentSession[Any],
        config: VoicePipelineConfig,
        *,
        room: rtc.Room | None,
        voicemail_llm: llm.LLM[Any] | None,
        on_end: Callable[[str], object],
    ) -> CallFeatures:
        """`on_end(reason)` ends the call (voicemail); `voicemail_llm` None classifies with the session's LLM."""
        features = cls(
            voicemail=await VoicemailScreen.start(
                session, config, caller=caller_of(session, room), classifier=voicemail_llm, on_end=on_end
            ),
            dtmf=DtmfCollector.attach(session, config, room),
            detach_phrases=attach_phrase_interruptions(session, config),
        )
        if config.background_audio_enabled and room is not None:
            # publishing a track takes a round trip to the server: the greeting does not wait for it
            features._ambience = asyncio.create_task(BackgroundAudio.start(session, config, room), name="ambience")
        return features

    async def aclose(self) -> None:
        if self.voicemail is not None:
            await self.voicemail.aclose()
        if self.dtmf is not None:
            self.dtmf.detach()
        if self.detach_phrases is not None:
            self.detach_phrases()
        if self._ambience is not None:
            # asyncio.wait, not await: a start the job's teardown cancelled must not cancel the end of the call
            done, _ = await asyncio.wait({self._ambience}, timeout=AMBIENCE_START_TIMEOUT_S)
            if not done:
                self._ambience.cancel()
                return
            if self._ambience.cancelled() or self._ambience.exception() is not None:
                # the room went away before the track was published: nothing plays
                log.warning(
                    "background audio did not start: %r",
                    None if self._ambience.cancelled() else self._ambience.exception(),
                )
                return
            ambience = self._ambience.result()
            if ambience is not None:
                await ambience.aclose()
