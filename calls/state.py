"""One call's state, as livekit's examples keep it: a typed dataclass on `AgentSession.userdata`.

Written by the call's parts as it runs (the supervisor's decisions and member changes land in `supervision`, the
tools' variable writes in `variables`, the first reason to end the call in `end_reason`) and read at the end to
assemble the session record (calls/outcome.py). Agents and tools are handed the pieces they write (the variables,
`end`), so procedures/ and tools/ need not know this type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from calls.admission import Admission
from catalog.variables import CallVariables
from contract.dispatch import DispatchClaims
from procedures.supervisor import Supervision


@dataclass
class CallState:
    admission: Admission
    variables: CallVariables
    job_id: str
    started_at: datetime
    supervision: Supervision = field(default_factory=Supervision)
    # The platform's SessionTerminationReason; the first recorded wins (see `end`).
    end_reason: str | None = None
    ended_at: datetime | None = None

    @property
    def claims(self) -> DispatchClaims:
        return self.admission.claims

    def end(self, reason: str) -> None:
        """Record why the call ends. The first reason wins: an agent that ended the call is not later
        'participant_left' because the caller hung up while it said goodbye."""
        if self.end_reason is None:
            self.end_reason = reason

    @property
    def log_context(self) -> dict[str, str]:
        return {
            "session_id": str(self.claims.session_id),
            "agent_id": str(self.admission.agent.id),
            "job_id": self.job_id,
        }
