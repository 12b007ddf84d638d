"""The platform's session types (Feather `SessionType`): one enum for the grant, the door, the worker and records.

A StrEnum, so a value read from JSON or a database row (`"test"`) compares equal to its member.
"""

from __future__ import annotations

from enum import StrEnum


class SessionType(StrEnum):
    # A real caller: post-call summary and memory run, webhooks are sent.
    LIVE = "live"
    # Someone testing an agent (the call page, `voice-worker web-call`): no summary, no memory read or written.
    TEST = "test"
    # A scripted or simulated caller (`voice-worker simulate`): like test, and records are marked as such.
    SIMULATION = "simulation"

    @property
    def suppresses_postcall(self) -> bool:
        """No summary, no memory read or written: nobody real was on the call."""
        return self is not SessionType.LIVE
