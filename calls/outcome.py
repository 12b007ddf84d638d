"""A finished call as its session record (records/outcome.py `SessionOutcome`): the one place it is assembled."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from livekit.agents import AgentSession

from calls.history import transcript_from_history, turn_metrics_from_history
from calls.state import CallState
from records.outcome import SessionOutcome, ToolCallRecord


def session_outcome(
    state: CallState, session: AgentSession[Any], tool_calls: Sequence[ToolCallRecord] = ()
) -> SessionOutcome:
    """Everything known about the call, for the session record and post-call processing."""
    admission, claims = state.admission, state.claims
    team = admission.team
    return SessionOutcome(
        session_id=claims.session_id,
        session_type=claims.session_type,
        agent_id=None if team else admission.agent.id,
        team_id=team.id if team else None,
        revision_id=None if team else admission.revision.id,
        end_user_id=claims.end_user_id,
        started_at=state.started_at,
        ended_at=state.ended_at or datetime.now(UTC),
        end_reason=state.end_reason or "unknown",
        procedure=state.supervision.procedure_choice(),
        member_changes=tuple(state.supervision.member_changes),
        transcript=transcript_from_history(session.history),
        turn_metrics=turn_metrics_from_history(session.history),
        tool_calls=tuple(tool_calls),
        usage=_usage(session),
        summary_instructions=(team.summary_instructions if team else admission.revision.summary_instructions),
    )


def _usage(session: AgentSession[Any]) -> dict[str, Any]:
    try:
        return {"model_usage": [u.model_dump(mode="json") for u in session.usage.model_usage]}
    except Exception:  # usage shapes vary by provider; the record must not fail for it
        return {}
