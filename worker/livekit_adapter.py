"""One of the two places voice-worker reaches into livekit-agents internals (1.8.9): how an offer is answered.
(The other is pipelines/speaking_rate.py; tests/test_livekit_internals.py fails if a third appears.)

livekit-agents answers a job offer (`AvailabilityRequest`) in `AgentServer._answer_availability`: it refreshes
the load, asks `_is_available()` (effective load below `load_threshold`), reserves a slot (`_reserved_slots`) and
only then runs our request function. Two things about that do not fit a voice worker:

- Order. A forged or expired offer would wait for the capacity decision and, at or near capacity, be answered
  "not available" (terminate=False): LiveKit then offers it to every other worker, the refusal is counted as
  `at_capacity`, and while it is being judged it holds a slot a real caller needs. So the offer is screened
  (signature, expiry, catalog: `DispatchGate.screen`) before livekit sees it, and refused with terminate=True.
- Bursts. livekit sizes each reserved slot `load_threshold / num_idle_processes` while no job runs, which lets 2
  of 50 simultaneous offers through (issue 17). The effective load here is this worker's own capacity model
  instead (worker/capacity.py `CallLoad.effective`: active plus reserved calls against WORKER_CALL_CAPACITY,
  CPU as a guard), so a burst is accepted up to the capacity and refused at once above it.

Everything else (reservation and its release, the accept/assignment flow, the status sent to LiveKit) stays
livekit's. tests/test_worker_livekit_adapter.py fails loudly when the installed livekit-agents stops doing what this
module relies on. Move to public API when livekit-agents offers it: a request hook that runs before the
availability check (today `AgentServer.rtc_session(on_request=...)` runs after it) and a load hook that sees
reserved jobs (today `load_fnc(server)` sees `server.active_jobs` only).
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from livekit.agents import AgentServer
from livekit.protocol import agent

from telemetry import metrics
from worker.capacity import CallLoad

# Why livekit's own check refused an offer; LiveKit may offer the job to another worker (terminate=False).
DRAINING = "draining"
AT_CAPACITY = "at_capacity"

# The livekit-agents release this adapter was written against (the guard test names it when it changes).
WRITTEN_FOR = "1.8.9"

log = logging.getLogger("voice_worker.server")


class OfferScreen(Protocol):
    def __call__(self, job: agent.Job) -> bool:
        """True when the offer must be refused for good (terminate=True), whatever the load."""
        ...


class AdmissionAdapter(AgentServer):
    """An AgentServer that screens offers before its capacity decision and counts capacity in calls."""

    _offer_screen: OfferScreen | None = None
    # The load threshold livekit applies in this run (dev or production), set by the subclass before `run()`
    # through the public `update_options`; infinite means livekit's own convention for a dev worker.
    load_threshold_in_force: float = math.inf

    def screen_offers(self, screen: OfferScreen) -> None:
        self._offer_screen = screen

    async def _answer_availability(self, msg: agent.AvailabilityRequest, *, received_at: float | None = None) -> None:
        screen = self._offer_screen
        try:
            refuse = screen is not None and screen(msg.job)
        except Exception:
            # An offer must always be answered: on to livekit, whose request function meets the same trouble and
            # refuses the offer without terminate (as before the screen existed), so another worker may take it.
            log.exception("dispatch screen failed for job %s", msg.job.id, extra={"job_id": msg.job.id})
            refuse = False
        if refuse:
            # Answered here, so the offer never reaches livekit's load check nor reserves a slot.
            refusal = agent.WorkerMessage()
            refusal.availability.job_id = msg.job.id
            refusal.availability.available = False
            refusal.availability.terminate = True
            await self._queue_msg(refusal)
            return
        await super()._answer_availability(msg, received_at=received_at)

    def _is_available(self) -> bool:
        # livekit's check before it asks the request function; an offer it declines here never reaches the gate
        available = super()._is_available()
        if not available:
            metrics.dispatch_refused(DRAINING if self.draining else AT_CAPACITY)
        return available

    def _get_effective_load(self) -> float:
        # livekit compares this with load_threshold both before accepting an offer (`_is_available`) and for the
        # WS_FULL status it sends every 2.5 s; create_server sets the threshold to CallLoad.FULL (1.0).
        load_fnc = self.load_fnc
        if not isinstance(load_fnc, CallLoad):
            return super()._get_effective_load()
        if math.isinf(self.load_threshold_in_force):
            # dev mode: livekit never reports a dev worker full; keep its convention
            return super()._get_effective_load()
        return load_fnc.effective(active=len(self.active_jobs), reserved=self._reserved_slots)
