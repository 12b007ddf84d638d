"""`background_audio_*`: an ambience under the whole call, played by livekit's `BackgroundAudioPlayer` from its
built-in clips.

The player publishes its own audio track (`background_audio`) beside the agent's voice; the caller's side mixes
the two (a browser plays both tracks, LiveKit SIP mixes every track of the room into the phone line). The
ambience starts when the call starts, at `background_audio_volume` (0-1, the clip's own level times this), plays
once or loops (`background_audio_loop`), and stops when the session closes: the player is closed and its track
unpublished. Without a room (console, tests in text mode) there is nowhere to publish, and nothing plays.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice.background_audio import AudioConfig, BackgroundAudioPlayer, BuiltinAudioClip, PlayHandle

from catalog.pipeline_config import BackgroundAudioPreset, VoicePipelineConfig

log = logging.getLogger("voice_worker.pipelines.background_audio")

CLOSE_TIMEOUT_S = 2.0

# The platform's presets, as livekit's built-in clips ("cafe": livekit's crowded room).
PRESET_CLIPS: dict[BackgroundAudioPreset, BuiltinAudioClip] = {
    "office": BuiltinAudioClip.OFFICE_AMBIENCE,
    "cafe": BuiltinAudioClip.CROWDED_ROOM,
    "city": BuiltinAudioClip.CITY_AMBIENCE,
    "keyboard_typing": BuiltinAudioClip.KEYBOARD_TYPING,
    "keyboard_typing2": BuiltinAudioClip.KEYBOARD_TYPING2,
}


class BackgroundAudio:
    """One call's ambience; `await BackgroundAudio.start(...)` once the session runs in its room."""

    def __init__(self, player: BackgroundAudioPlayer, handle: PlayHandle) -> None:
        self._player = player
        self.handle = handle
        self._closing: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, session: AgentSession[Any], config: VoicePipelineConfig, room: rtc.Room | None
    ) -> BackgroundAudio | None:
        if not config.background_audio_enabled or room is None:
            return None
        player = BackgroundAudioPlayer()
        await player.start(room=room, agent_session=session)
        handle = player.play(
            AudioConfig(PRESET_CLIPS[config.background_audio_preset], volume=config.background_audio_volume),
            loop=config.background_audio_loop,
        )
        ambience = cls(player, handle)
        # the caller hung up, the agent ended the call, a limit was reached: the ambience ends with the session
        session.on("close", ambience._on_close)
        return ambience

    def _on_close(self, _event: object) -> None:
        # the clip stops at once, whatever becomes of the player's close (the job's teardown may cancel it)
        self.handle.stop()
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._player.aclose())

    async def aclose(self) -> None:
        """Stop the ambience and unpublish its track (idempotent). Never raises and never waits longer than
        `CLOSE_TIMEOUT_S`: it runs at the end of a call, before the session record is written."""
        self._on_close(None)
        assert self._closing is not None
        # asyncio.wait, not await: a close task cancelled by the job's own teardown must not cancel the caller
        done, _ = await asyncio.wait({self._closing}, timeout=CLOSE_TIMEOUT_S)
        if not done:
            log.warning("background audio did not close within %.0f s", CLOSE_TIMEOUT_S)
        elif not self._closing.cancelled() and self._closing.exception() is not None:
            # the room may be gone already; nothing is left to stop then
            log.debug("background audio closed with an error", exc_info=self._closing.exception())
