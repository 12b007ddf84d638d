"""The LiveKit `AgentServer`: explicit dispatch under our agent name, admission before a job process is spent,
and the main process's part in fleet operations (drain, load, metrics, post-call delivery).

Nothing here runs at import time: the process executor starts job processes with `forkserver`, which imports
this module in every child. `create_server()` is called by the composition root (worker/app.py) and the tests.

SIGTERM (livekit's CLI): the worker reports WS_FULL and refuses every new offer at once, lets the active calls
run on for up to DRAIN_TIMEOUT_S, ends what is left, then `VoiceWorkerServer.aclose` flushes the post-call
outbox in the main process, after every job (and its post-call processing) has ended; the process exits 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from livekit.agents import AgentServer, JobContext, JobExecutorType, JobProcess, JobRequest
from livekit.agents.utils.hw import get_cpu_monitor
from livekit.protocol import agent

from calls.admission import Admission, admit
from calls.bootstrap import start_call
from calls.call import Call
from catalog.loader import CatalogStore
from contract.dispatch import DispatchRejected, verify_dispatch_metadata
from records.record import SessionRecord
from telemetry import logcontext, metrics
from worker import event_loop
from worker.capacity import CallLoad
from worker.connectivity import ConnectionWatch
from worker.health import LIVEKIT_HEALTH_HOST, HealthEndpoint
from worker.livekit_adapter import DRAINING, AdmissionAdapter
from worker.metrics_endpoint import MetricsEndpoint
from worker.outbox_loop import OutboxLoop
from worker.settings import Settings, get_settings

if TYPE_CHECKING:
    from worker.services import ProcessServices

log = logging.getLogger("voice_worker.server")


class DispatchGate:
    """The request handler: runs in the main worker process for every job LiveKit offers us."""

    def __init__(self, settings: Settings, catalog: CatalogStore) -> None:
        self._settings = settings
        self._catalog = catalog
        self._server: AgentServer | None = None
        self.refusals: dict[str, int] = {}

    def attach(self, server: AgentServer) -> None:
        """The server whose drain this gate honours."""
        self._server = server

    def _refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        metrics.dispatch_refused(reason)

    def _judge(self, job: agent.Job) -> Admission | DispatchRejected:
        try:
            claims = verify_dispatch_metadata(
                job.metadata, secret=self._settings.signing_secret(), issuer=self._settings.dispatch_issuer
            )
            return admit(claims, self._catalog.get(), self._settings)
        except DispatchRejected as exc:
            return exc

    def _log_refusal(self, job: agent.Job, exc: DispatchRejected) -> None:
        self._refused(exc.reason)
        log.warning(
            "dispatch refused: job %s room %s: %s: %s",
            job.id,
            job.room.name,
            exc.reason,
            exc.detail,
            extra={"job_id": job.id},
        )

    def screen(self, job: agent.Job) -> bool:
        """Before livekit's capacity decision (worker/livekit_adapter.py): True refuses the offer for good. A
        verdict costs ~0.1 ms, so a burst of forged offers is refused as fast as it arrives and never holds a
        slot, and the refusal says why whatever the load."""
        verdict = self._judge(job)
        if isinstance(verdict, DispatchRejected):
            self._log_refusal(job, verdict)
            return True
        return False

    async def __call__(self, request: JobRequest) -> None:
        job = request.job
        # Judged again (the screen's verdict is not carried over): the catalog may have changed meanwhile.
        verdict = self._judge(job)
        if isinstance(verdict, DispatchRejected):
            self._log_refusal(job, verdict)
            # terminate=True: no other worker of ours would judge the same grant differently.
            await request.reject(terminate=True)
            return
        if self._server is not None and self._server.draining:
            # livekit refuses offers itself once draining; this covers an offer whose check ran just before
            self._refused(DRAINING)
            log.info(
                "dispatch refused: job %s room %s: worker is draining", job.id, job.room.name, extra={"job_id": job.id}
            )
            await request.reject(terminate=False)
            return
        admission, claims = verdict, verdict.claims
        target = admission.team or admission.agent
        log.info(
            "dispatch accepted: job %s room %s session %s %s %s",
            job.id,
            job.room.name,
            claims.session_id,
            claims.target_kind,
            target.id,
            extra={"job_id": job.id, "session_id": str(claims.session_id), "agent_id": str(admission.agent.id)},
        )
        metrics.dispatch_accepted()
        logcontext.remember_job(job.id, session_id=str(claims.session_id), agent_id=str(admission.agent.id))
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
    """Once per job executor (a process, or a thread with JOB_EXECUTOR=thread): load the VAD model, the catalog
    and the store and prebuild the pipelines, so no call waits for them (worker/services.py)."""
    from worker.services import build_process_services, freeze_once

    settings = get_settings()
    # a job process creates its loop after this setup: it is the process's first chance to choose it
    event_loop.install(settings.event_loop)
    # this process's log records carry the call's ids (telemetry/logcontext.py)
    logcontext.install()
    proc.userdata["services"] = build_process_services(settings)
    freeze_once()


async def entrypoint(ctx: JobContext) -> None:
    services: ProcessServices = ctx.proc.userdata["services"]
    try:
        call = await start_call(ctx, services, room=ctx.room)
    except DispatchRejected as exc:
        # Admitted in the main process but not any more (catalog changed in between): end the job cleanly.
        log.error("job %s refused at start: %s: %s", ctx.job.id, exc.reason, exc.detail)
        ctx.shutdown(reason=f"refused: {exc.reason}")
        return

    async def on_shutdown() -> None:
        await after_call(call, services)

    ctx.add_shutdown_callback(on_shutdown)
    await call.wait_closed()
    ctx.shutdown(reason=call.end_reason or "session closed")


async def after_call(call: Call, services: ProcessServices) -> None:
    """Runs on every way a job ends (caller left, end_call, termination, drain): the caller is gone by now, so
    recording and post-processing cost them nothing. Bounded per step; never raises. Whatever webhook this one
    attempt cannot deliver, the main process's outbox loop retries (worker/outbox_loop.py)."""
    # shutdown callbacks run outside the call's task tree: bind its log fields again
    with logcontext.bound(call.log_context):
        await call.finish()
        if services.postcall is not None:
            metrics.postcall_processed(_postcall_result(await services.postcall.process(call.outcome())))
        if services.delivery is not None:
            await services.delivery.drain_once()


def _postcall_result(record: SessionRecord | None) -> str:
    if record is None:
        return "failed"
    return "degraded" if record.postcall_error else "ok"


T = TypeVar("T")


@dataclass(frozen=True)
class PerMode(Generic[T]):
    """An AgentServer option whose value depends on livekit's dev mode (`--dev`), known only when `run()` starts."""

    dev: T
    production: T

    def pick(self, devmode: bool) -> T:
        return self.dev if devmode else self.production


def _per_mode(value: T | PerMode[T]) -> PerMode[T]:
    return value if isinstance(value, PerMode) else PerMode(value, value)


class VoiceWorkerServer(AdmissionAdapter):
    """livekit's AgentServer plus what voice-worker's main process owns:

    - the health port (worker/health.py): livekit's `GET /` and `GET /worker` relayed, and `GET /ready`;
    - the metrics endpoint (worker/metrics_endpoint.py); both up for as long as `run()`;
    - the post-call outbox loop, started with the worker and stopped and flushed in `aclose()`, which livekit's
      CLI calls after the drain: by then every job has ended and queued its webhook;
    - the call-context log filter on this process's handlers (the thread executor runs calls here too);
    - offers screened by the dispatch gate before livekit's capacity decision, and capacity counted in calls
      (worker/livekit_adapter.py); the offers livekit refuses by itself (draining, at capacity) counted;
    - the load threshold and idle processes for dev or production, chosen when `run()` learns livekit's dev mode.
    """

    def __init__(
        self,
        *,
        health: tuple[str, int],
        outbox: OutboxLoop | None = None,
        metrics_endpoint: MetricsEndpoint | None = None,
        load_threshold: float | PerMode[float],
        num_idle_processes: int | PerMode[int],
        **options: Any,
    ) -> None:
        """`health`: where the health port listens; livekit's own health server goes to the loopback."""
        super().__init__(host=LIVEKIT_HEALTH_HOST, port=0, **options)
        self._outbox = outbox
        self.metrics_endpoint = metrics_endpoint
        self._load_threshold_per_mode = _per_mode(load_threshold)
        self._idle_processes_per_mode = _per_mode(num_idle_processes)
        self.connection = ConnectionWatch()
        self.health = HealthEndpoint(*health, readiness=self.readiness, livekit_port=lambda: self.worker_info.http_port)
        self.on("worker_started", self._on_worker_started)
        self.on("worker_registered", lambda *_: self.connection.registered())

    def readiness(self) -> str | None:
        """None when ready to take calls, otherwise why not."""
        if self.draining:
            return "draining"
        if not self.connection.registered_once:
            return "not registered with LiveKit yet"
        if not self.connection.up:
            return "reconnecting to LiveKit"
        return None

    async def run(self, *, devmode: bool = False, unregistered: bool = False) -> None:
        self.load_threshold_in_force = self._load_threshold_per_mode.pick(devmode)
        self.update_options(
            load_threshold=self.load_threshold_in_force,
            num_idle_processes=self._idle_processes_per_mode.pick(devmode),
        )
        self.connection.install()
        await self.health.start()
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.start()
        try:
            await super().run(devmode=devmode, unregistered=unregistered)
        except BaseException:
            # a run that never started is never closed by livekit's CLI: free the ports here
            await self._close_own()
            raise

    def _on_worker_started(self) -> None:
        logcontext.install()
        if self._outbox is not None:
            self._outbox.start()

    async def aclose(self) -> None:
        await super().aclose()
        if self._outbox is not None:
            await self._outbox.stop_and_flush()
        await self._close_own()

    async def _close_own(self) -> None:
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.aclose()
        await self.health.aclose()
        self.connection.remove()


SessionEntrypoint = Callable[[JobContext], Awaitable[None]]


def create_server(
    settings: Settings,
    *,
    gate: DispatchGate | None = None,
    session_entrypoint: SessionEntrypoint = entrypoint,
    **server_options: Any,
) -> VoiceWorkerServer:
    """The worker, registered for explicit dispatch only (a non-empty agent name turns automatic dispatch off).

    `server_options` override AgentServer options (tests: executor type, idle processes, the load function).
    `session_entrypoint` is the production `entrypoint` except in tests that hold calls without an SFU."""
    key, secret = settings.livekit_credentials()
    options: dict[str, Any] = {
        "ws_url": settings.livekit_url,
        "api_key": key,
        "api_secret": secret,
        "setup_fnc": setup_process,
        # Shutdown callbacks run post-call processing (up to three bounded steps: summary, memory, delivery).
        "shutdown_process_timeout": 3 * settings.postcall_step_timeout_s + 10,
        # Keep retrying: a worker that gives up while LiveKit restarts is a worker an operator must restart.
        "max_retry": 2**31,
        "load_fnc": CallLoad.from_settings(settings),
        # CallLoad's load is 1 when full (calls at capacity, or CPU at LOAD_THRESHOLD); livekit's convention: a
        # dev worker never reports itself full
        "load_threshold": PerMode(dev=math.inf, production=CallLoad.FULL),
        "drain_timeout": settings.drain_timeout_s,
        "job_executor_type": JobExecutorType(settings.job_executor),
        # the setup function loads the VAD and the catalog and prebuilds every pipeline (worker/services.py);
        # on a busy machine that takes longer than livekit's 10 s default
        "initialize_process_timeout": 60.0,
        # livekit's dev mode keeps no idle job process, so every call of `voice-worker dev` waited for one to start
        # (seconds) before the agent joined the caller's browser: keep one warm there; production keeps livekit's
        # default, one per CPU (tests/test_livekit_internals.py compares it with livekit's)
        "num_idle_processes": PerMode(dev=1, production=production_idle_processes()),
        # Process executor: this module, the per-process services and everything a call imports (calls,
        # procedures, pipelines, tools, post-call) are imported once in livekit's forkserver, beside the plugins
        # livekit preloads there, and every job process inherits them copy-on-write instead of importing its own
        # copy: 85 -> 69 MB PSS per call (docs/performance.md).
        "preload_modules": [__name__, "worker.services"],
    }
    options.update(server_options)
    endpoint = MetricsEndpoint(settings.health_host, settings.metrics_port) if settings.metrics_port else None
    server = VoiceWorkerServer(
        health=(settings.health_host, settings.health_port),
        outbox=OutboxLoop(settings),
        metrics_endpoint=endpoint,
        **options,
    )
    gate = gate or DispatchGate(settings, CatalogStore(settings.catalog_path))
    gate.attach(server)
    server.screen_offers(gate.screen)
    server.rtc_session(session_entrypoint, agent_name=settings.agent_name, on_request=gate)
    return server


def production_idle_processes() -> int:
    """livekit's production default for warm job processes: one per CPU the worker may use (a container's quota)."""
    return math.ceil(get_cpu_monitor().cpu_count())
