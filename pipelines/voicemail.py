"""`voicemail_*`: whether a phone call was answered by a person or a machine, by livekit's answering-machine
detection (`livekit.agents.AMD`), and what the agent does about a machine.

- Only SIP callers are screened (a phone line LiveKit SIP bridges); a web caller is a person in a browser.
- `voicemail_detection_mode: leave_message` turns it on. The classifier is an LLM: `voicemail_detection_model`
  (built on the primary model's provider, pipelines/builder.py), else the call's own model chain. It listens to
  the session's transcripts of the answering side's first words.
- `voicemail_detection_timeout_ms` caps the wait for a verdict (livekit's `detection_options.timeout`, a hard cap):
  without one, the call goes on as if a person answered. While it waits, the agent holds its greeting.
- A voicemail greeting (`machine-vm`): the agent says `voicemail_message` (not interruptible) after the beep and
  hangs up; a mailbox that takes no message (`machine-unavailable`): it hangs up at once. Either way the call
  ends with the platform's reason `voicemail_detected`. A person, an IVR menu or no verdict: the call goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.agents import AMD, AgentSession, AMDCategory, AMDPredictionEvent, llm

from catalog.pipeline_config import VoicePipelineConfig

log = logging.getLogger("voice_worker.pipelines.voicemail")

VOICEMAIL_DETECTED = "voicemail_detected"


def is_sip(participant: rtc.Participant | None) -> bool:
    return participant is not None and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP


class VoicemailScreen:
    """`VoicemailScreen.start(...)` right after `session.start()`; the verdict arrives in the background."""

    def __init__(
        self,
        session: AgentSession[Any],
        config: VoicePipelineConfig,
        detector: AMD,
        on_end: Callable[[str], object],
    ) -> None:
        self._session = session
        self._message = config.voicemail_message
        self._detector = detector
        self._on_end = on_end
        self.verdict: AMDPredictionEvent | None = None
        self._task = asyncio.create_task(self._run(), name="voicemail-screen")

    @classmethod
    async def start(
        cls,
        session: AgentSession[Any],
        config: VoicePipelineConfig,
        *,
        caller: rtc.Participant | None,
        classifier: llm.LLM[Any] | None,
        on_end: Callable[[str], object],
    ) -> VoicemailScreen | None:
        """None unless voicemail detection is on and the caller is on a phone line. `classifier` None: the
        session's own LLM classifies. `on_end(reason)` hangs up."""
        if config.voicemail_detection_mode == "off" or not is_sip(caller):
            return None
        assert caller is not None
        detector = AMD(
            session,
            llm=classifier,
            # the session's own transcripts: no second STT stream per call
            stt=None,
            # an IVR menu is for the agent to handle; only a mailbox ends the call
            ivr_detection=False,
            participant_identity=caller.identity,
            suppress_compatibility_warning=True,
            detection_options={"timeout": config.voicemail_detection_timeout_ms / 1000},
            # the timeout is the platform's cap on the wait, even while the greeting still plays
            wait_until_finished=False,
        )
        await detector.__aenter__()
        return cls(session, config, detector, on_end)

    async def _run(self) -> None:
        try:
            self.verdict = verdict = await self._detector.execute()
        except RuntimeError:  # the call ended before a verdict
            return
        finally:
            await self._detector.aclose()
        log.info("answered by: %s (%s)", verdict.category.value, verdict.reason)
        if verdict.category == AMDCategory.MACHINE_VM:
            if self._message:
                await self._session.say(self._message, allow_interruptions=False, add_to_chat_ctx=True)
            self._on_end(VOICEMAIL_DETECTED)
        elif verdict.category == AMDCategory.MACHINE_UNAVAILABLE:
            self._on_end(VOICEMAIL_DETECTED)

    async def wait(self) -> AMDPredictionEvent | None:
        await asyncio.shield(self._task)
        return self.verdict

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._detector.aclose()
