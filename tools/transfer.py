"""call_transfer tools: send the caller to a person.

A caller on a phone line (a SIP participant) is transferred through LiveKit's SIP API: `cold` hands the line
over with a SIP REFER (`JobContext.transfer_sip_participant`), and the call ends for the agent; `warm` runs
livekit's `WarmTransferTask`, which puts the caller on hold, dials the destination through the outbound trunk
(`SIP_OUTBOUND_TRUNK_ID`), briefs the person who answers and joins them to the caller, after which the agent
leaves. A declined or failed warm transfer returns the caller to the agent with the reason.

A web caller has no phone line to hand over. In a team call they go to a team member instead (the tool's
`web_member`, else the team's fallback member); otherwise the model gets a plain answer to say, never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, llm

from catalog.tools import ToolDefinition

log = logging.getLogger("voice_worker.tools")

# (member router name or None for the team's fallback, reason, conversation so far) -> the member's agent, or a
# message for the model when nobody can take the call.
TeamHandoff = Callable[[str | None, str | None, llm.ChatContext], Agent | str]
# (caller's participant identity, transfer_to) -> completes once LiveKit accepted the transfer
SipTransfer = Callable[[str, str], Awaitable[None]]
# (sip_call_to, trunk id, conversation so far) -> completes once the person was joined to the caller
WarmTransfer = Callable[[str, str, llm.ChatContext], Awaitable[None]]

NO_PHONE_LINE = (
    "This caller is on a web call, which cannot be transferred to a phone line. Tell them so briefly, and offer to "
    "keep helping or to arrange a call back."
)


@dataclass(frozen=True)
class TransferOutcome:
    status: str  # "transferred" | "handed_off" | "unavailable" | "error"
    reply: Agent | str
    error: str | None = None


def sip_caller(session: AgentSession[Any]) -> rtc.RemoteParticipant | None:
    """The caller when they are on a phone line (a SIP participant), else None (web caller, text session)."""
    try:
        participant = session.room_io.linked_participant
    except RuntimeError:  # a session without a room: text mode, tests, the console
        return None
    if participant is not None and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
        return participant
    return None


def _transfer_to(destination: str) -> str:
    return f"tel:{destination}" if destination.startswith("+") else destination


async def _job_sip_transfer(identity: str, transfer_to: str) -> None:
    from livekit.agents import get_job_context

    await get_job_context().transfer_sip_participant(identity, transfer_to)


async def _job_warm_transfer(call_to: str, trunk_id: str, chat_ctx: llm.ChatContext) -> None:
    from livekit.agents.beta.workflows import WarmTransferTask

    await WarmTransferTask(sip_call_to=call_to, sip_trunk_id=trunk_id, chat_ctx=chat_ctx)


@dataclass
class TransferLine:
    """What a call_transfer tool needs from its call. The SIP functions default to the job's LiveKit API."""

    on_end: Callable[[str], None]
    sip_outbound_trunk_id: str | None = None
    sip_transfer: SipTransfer = _job_sip_transfer
    warm_transfer: WarmTransfer = _job_warm_transfer

    async def transfer(
        self,
        tool: ToolDefinition,
        session: AgentSession[Any],
        chat_ctx: llm.ChatContext,
        reason: str | None,
        team_handoff: TeamHandoff | None,
    ) -> TransferOutcome:
        target = tool.transfer_target
        assert target is not None, "transfer() is for call_transfer tools"
        caller = sip_caller(session)
        if caller is None:
            if team_handoff is not None:
                reply = team_handoff(target.web_member, reason, chat_ctx)
                if isinstance(reply, Agent):
                    return TransferOutcome("handed_off", reply)
                return TransferOutcome("unavailable", reply, "no team member could take the web call")
            return TransferOutcome("unavailable", NO_PHONE_LINE, "a web call cannot be transferred to a phone line")
        if target.mode == "cold":
            try:
                await self.sip_transfer(caller.identity, _transfer_to(target.destination))
            except Exception as exc:  # the API's error text may carry SIP details; the type is enough for the model
                log.warning("tool %s: SIP transfer failed: %s", tool.slug, type(exc).__name__)
                return TransferOutcome(
                    "error", "The transfer did not go through. Apologise and keep helping.", type(exc).__name__
                )
            self.on_end("transferred")
            return TransferOutcome("transferred", "The caller has been transferred; the call is over for you.")
        if not self.sip_outbound_trunk_id:
            return TransferOutcome(
                "unavailable", "Transfers are not available right now. Apologise and keep helping.", "no SIP trunk"
            )
        try:
            await self.warm_transfer(target.destination.removeprefix("tel:"), self.sip_outbound_trunk_id, chat_ctx)
        except Exception as exc:  # ToolError when the person declined or did not answer: the caller stays with us
            log.info("tool %s: warm transfer not completed: %s", tool.slug, type(exc).__name__)
            return TransferOutcome(
                "unavailable", "Nobody could take the call. Tell the caller and keep helping.", type(exc).__name__
            )
        self.on_end("transferred")
        session.shutdown(drain=True)
        return TransferOutcome("transferred", "The caller is now with a colleague; the call is over for you.")
