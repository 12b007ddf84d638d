"""`dtmf_*`: keypad digits the caller presses, collected into one user turn for the LLM.

Digits arrive as the room's `sip_dtmf_received` event, from both kinds of caller: LiveKit SIP turns a phone's
keypad tones into it, and a web page sends the same packet with `localParticipant.publishDtmf(code, digit)`. Digits
from agents (another worker in the room) are ignored.

Collection:
- `dtmf_termination_digit` (default `#`; empty for none) ends the entry at once; it is not part of it. Pressed
  with nothing collected, it is sent on its own (a menu's "press # to continue").
- `dtmf_max_digits` ends the entry when that many digits are in.
- `dtmf_inter_digit_timeout_ms` ends it when no key follows for that long.
- The entry reaches the LLM as one user message, `dtmf_prefix` + the digits (`Keypad input: 4711`), through
  `session.generate_reply(user_input=...)`: it joins the chat history like a spoken turn and the agent answers it,
  cutting off whatever it was saying (as a spoken interruption would).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession

from catalog.pipeline_config import DTMF_KEYS, VoicePipelineConfig

log = logging.getLogger("voice_worker.pipelines.dtmf")


class DtmfCollector:
    def __init__(self, session: AgentSession[Any], config: VoicePipelineConfig) -> None:
        self._session = session
        self._prefix = config.dtmf_prefix
        self._termination = config.dtmf_termination_digit
        self._max_digits = config.dtmf_max_digits
        self._timeout_s = config.dtmf_inter_digit_timeout_ms / 1000
        self._digits: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._room: rtc.Room | None = None
        self.sent: list[str] = []

    @classmethod
    def attach(
        cls, session: AgentSession[Any], config: VoicePipelineConfig, room: rtc.Room | None
    ) -> DtmfCollector | None:
        """Listen to the room's keypad events for this call (None: DTMF is off or there is no room)."""
        if not config.dtmf_enabled or room is None:
            return None
        collector = cls(session, config)
        collector._room = room
        room.on("sip_dtmf_received", collector._on_dtmf)
        session.on("close", lambda _ev: collector.detach())
        return collector

    def detach(self) -> None:
        if self._room is not None:
            self._room.off("sip_dtmf_received", self._on_dtmf)
            self._room = None
        self._cancel_timer()

    def _on_dtmf(self, event: rtc.SipDTMF) -> None:
        if event.participant is not None and event.participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return
        self.press(event.digit)

    def press(self, digit: str) -> None:
        """One key, as the keypad sent it."""
        digit = digit.strip().upper()
        if len(digit) != 1 or digit not in DTMF_KEYS:
            log.warning("ignored a keypad event that is not a key: %r", digit[:8])
            return
        if self._termination and digit == self._termination:
            self._send(self._digits or [digit])
            return
        self._digits.append(digit)
        if len(self._digits) >= self._max_digits:
            self._send(self._digits)
            return
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, lambda: self._send(self._digits))

    def _send(self, digits: list[str]) -> None:
        self._cancel_timer()
        text = self._prefix + "".join(digits)
        self._digits = []
        if not digits:
            return
        self.sent.append(text)
        # the caller's keys answer the agent: what it was saying gives way, as it would to speech
        speech = self._session.current_speech
        if speech is not None and not speech.interrupted and speech.allow_interruptions:
            self._session.interrupt()
        self._session.generate_reply(user_input=text)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
