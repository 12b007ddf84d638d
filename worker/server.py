"""The LiveKit `AgentServer`: explicit dispatch under our agent name, admission before a job process is spent.

Nothing here runs at import time: the process executor starts job processes with `forkserver`, which imports
this module in every child. `create_server()` is called by the composition root (worker/app.py) and the tests.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from livekit.agents import AgentServer, JobContext, JobProcess, JobRequest

from catalog.loader import CatalogStore
from worker.admission import admit
from worker.call import start_call
from worker.dispatch import DispatchRejected, verify_dispatch_metadata
from worker.settings import Settings, get_settings

if TYPE_CHECKING:
    from worker.services import ProcessServices

log = logging.getLogger("voice_worker.server")


class DispatchGate:
    """The request handler: runs in the main worker process for every job LiveKit offers us."""

    def __init__(self, settings: Settings, catalog: CatalogStore) -> None:
        self._settings = settings
        self._catalog = catalog
        self.refusals: dict[str, int] = {}

    async def __call__(self, request: JobRequest) -> None:
        job = request.job
        try:
            claims = verify_dispatch_metadata(
                job.metadata, secret=self._settings.signing_secret(), issuer=self._settings.dispatch_issuer
            )
            admission = admit(claims, self._catalog.get(), self._settings)
        except DispatchRejected as exc:
            self.refusals[exc.reason] = self.refusals.get(exc.reason, 0) + 1
            log.warning(
                "dispatch refused: job %s room %s: %s: %s", job.id, job.room.name, exc.reason, exc.detail
            )
            # terminate=True: no other worker of ours would judge the same grant differently.
            await request.reject(terminate=True)
            return
        target = admission.team or admission.agent
        log.info(
            "dispatch accepted: job %s room %s session %s %s %s",
            job.id,
            job.room.name,
            claims.session_id,
            claims.target_kind,
            target.id,
        )
        attributes = {
            "voice_worker.session_id": str(claims.session_id),
            "voice_worker.session_type": claims.session_type,
            "voice_worker.agent_id": str(admission.agent.id),
        }
        if admission.team is not None:
            attributes["voice_worker.team_id"] = str(admission.team.id)
        await request.accept(
            name=target.name,
            identity=f"agent-{claims.session_id.hex[:12]}",
            attributes=attributes,
        )


def setup_process(proc: JobProcess) -> None:
    """Once per job process: load the VAD model, the catalog and the store, so no call waits for them."""
    from worker.services import build_process_services

    proc.userdata["services"] = build_process_services(get_settings())


async def entrypoint(ctx: JobContext) -> None:
    services: ProcessServices = ctx.proc.userdata["services"]
    try:
        call = await start_call(ctx, services, room=ctx.room)
    except DispatchRejected as exc:
        # Admitted in the main process but not any more (catalog changed in between): end the job cleanly.
        log.error("job %s refused at start: %s: %s", ctx.job.id, exc.reason, exc.detail)
        ctx.shutdown(reason=f"refused: {exc.reason}")
        return

    async def after_call() -> None:
        # Runs on every way a job ends (caller left, end_call, termination, drain): the caller is gone by
        # now, so recording and post-processing cost them nothing. Bounded per step; never raises.
        await call.finish()
        if services.postcall is not None:
            await services.postcall.process(call.outcome())
        if services.delivery is not None:
            await services.delivery.drain_once()

    ctx.add_shutdown_callback(after_call)
    await call.wait_closed()
    ctx.shutdown(reason=call.end_reason or "session closed")


def create_server(settings: Settings, *, gate: DispatchGate | None = None, **server_options) -> AgentServer:  # noqa: ANN003
    """The worker, registered for explicit dispatch only (a non-empty agent name turns automatic dispatch off)."""
    key, secret = settings.livekit_credentials()
    server = AgentServer(
        ws_url=settings.livekit_url,
        api_key=key,
        api_secret=secret,
        host=settings.health_host,
        port=settings.health_port,
        setup_fnc=setup_process,
        # Shutdown callbacks run post-call processing (up to three bounded steps: summary, memory, delivery).
        shutdown_process_timeout=3 * settings.postcall_step_timeout_s + 10,
        # Keep retrying: a worker that gives up while LiveKit restarts is a worker an operator must restart.
        max_retry=2**31,
        **server_options,
    )
    server.rtc_session(
        entrypoint,
        agent_name=settings.agent_name,
        on_request=gate or DispatchGate(settings, CatalogStore(settings.catalog_path)),
    )
    return server
