"""An in-process stand-in for LiveKit's server side of the agent worker protocol.

`LiveKitServerDouble` listens on 127.0.0.1 (random free port) and serves the websocket a real
`livekit.agents.AgentServer` opens at `<LIVEKIT_URL>/agent`. It speaks the same protobuf frames the
LiveKit server does (`livekit.protocol.agent.ServerMessage` out, `WorkerMessage` in), modelled on
livekit/livekit `pkg/agent/worker.go`:

- auth: `Authorization: Bearer <JWT>` checked with `livekit.api.TokenVerifier(api_key, api_secret)`;
  the token must carry `video.agent == True`. Anything else gets HTTP 401 before the upgrade, and the
  refusal is recorded in `rejected_connections` (reason only; the token is never stored or logged).
- `register` -> `RegisterWorkerResponse(worker_id, server_info)`; the request is recorded.
- `offer_job()` sends `AvailabilityRequest(job=Job(...))` exactly as the server's `AssignJob` does
  (job state JS_RUNNING with worker_id/started_at) and returns the worker's `AvailabilityResponse`.
- `assign_job()` sends `JobAssignment(job, url, token)` where the token is what the server's
  `BuildAgentToken` mints: the identity/name/metadata/attributes the worker answered with (plus
  `lk.agent_name`), kind "agent", `room_join` + `agent` grants limited by the registered permissions.
- `terminate_job()` sends `JobTermination(job_id)`.
- `update_worker`, `update_job`, `migrate_job`, `simulate_job` are recorded with monotonic timestamps;
  `ping` is answered with `pong`.

What it does NOT implement:
- No SFU: there is no `/rtc` endpoint, so after `assign_job()` a job's `ctx.connect()` fails. Jobs
  under test should end through `ctx.shutdown()` (or `terminate_job()`) instead of joining the room.
- No Twirp room/dispatch/egress API (`/twirp/...`), no webhooks, no room or participant state.
- No dispatcher: jobs go only to the most recently registered, still-connected worker, and only when a
  test calls `offer_job()`; agent_name / namespace / load / WS_FULL status are recorded, not obeyed.
- No server-side availability timeout: `offer_job(timeout=...)` raises TimeoutError instead of
  retrying another worker; an accepted job is assigned only when the test calls `assign_job()`
  (the worker gives up on its own after its ASSIGNMENT_TIMEOUT, 7.5 s in livekit-agents 1.8).
- No job resumption/migration, no `go_away`, no `simulate_job` handling beyond recording it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jwt
from aiohttp import WSMsgType, web
from livekit import api
from livekit.protocol import agent, models

from tests.doubles.loopback_server import LoopbackServer

AGENT_NAME_ATTRIBUTE = "lk.agent_name"
# the real server mints agent join tokens valid for one hour (protocol agent.BuildAgentToken)
AGENT_TOKEN_TTL = datetime.timedelta(hours=1)
SERVER_PROTOCOL = 16


@dataclass(frozen=True)
class Registration:
    worker_id: str
    agent_name: str
    job_type: str  # JobType name, e.g. "JT_ROOM"
    version: str
    namespace: str
    deployment: str
    permissions: models.ParticipantPermission
    received_at: float


@dataclass(frozen=True)
class WorkerStatusUpdate:
    worker_id: str
    status: str  # WorkerStatus name, e.g. "WS_AVAILABLE"
    load: float
    job_count: int
    draining: bool
    received_at: float


@dataclass(frozen=True)
class JobStatusUpdate:
    worker_id: str
    job_id: str
    status: str  # JobStatus name, e.g. "JS_RUNNING"
    error: str
    received_at: float


@dataclass(frozen=True)
class AvailabilityAnswer:
    job_id: str
    available: bool
    terminate: bool
    participant_identity: str
    participant_name: str
    participant_metadata: str
    participant_attributes: dict[str, str]
    received_at: float


@dataclass(frozen=True)
class JobAssignmentRecord:
    job_id: str
    worker_id: str
    room_name: str
    url: str
    token: str
    sent_at: float


@dataclass(frozen=True)
class RejectedConnection:
    reason: str
    at: float


@dataclass(frozen=True)
class WorkerMessageRecord:
    """Any other worker message (migrate_job, simulate_job), kept as the raw protobuf."""

    worker_id: str
    kind: str
    message: agent.WorkerMessage
    received_at: float


@dataclass
class _Offer:
    job: agent.Job
    worker_id: str
    answer: asyncio.Future[AvailabilityAnswer]
    assigned: bool = False


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    registration: Registration
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, msg: agent.ServerMessage) -> None:
        async with self.send_lock:
            await self.ws.send_bytes(msg.SerializeToString())


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


class LiveKitServerDouble(LoopbackServer):
    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        region: str = "local",
        handshake_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self._api_key = api_key
        self._api_secret = api_secret
        self._verifier = api.TokenVerifier(api_key, api_secret)
        self._region = region
        self._handshake_timeout = handshake_timeout

        self.registrations: list[Registration] = []
        self.worker_statuses: list[WorkerStatusUpdate] = []
        self.job_statuses: list[JobStatusUpdate] = []
        self.answers: list[AvailabilityAnswer] = []
        self.assignments: list[JobAssignmentRecord] = []
        self.terminations: list[str] = []
        self.other_messages: list[WorkerMessageRecord] = []
        self.rejected_connections: list[RejectedConnection] = []
        self.disconnections: list[tuple[str, float]] = []

        self._connections: dict[str, _Connection] = {}
        self._offers: dict[str, _Offer] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    # a short shutdown_timeout: aclose() ends every websocket first, so nothing should linger
    shutdown_timeout = 1.0

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/agent", self._handle_agent)
        return app

    async def _before_cleanup(self) -> None:
        for conn in list(self._connections.values()):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5.0)
        for offer in self._offers.values():
            if not offer.answer.done():
                offer.answer.cancel()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # -- observation -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while at least one registered worker holds its websocket open."""
        return bool(self._connections)

    @property
    def assignment_count(self) -> int:
        return len(self.assignments)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds; it is re-checked after every recorded event."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_registered(self, timeout: float = 10.0) -> Registration:
        await self.wait_for(lambda: bool(self.registrations), timeout)
        return self.registrations[-1]

    async def wait_disconnected(self, timeout: float = 10.0) -> None:
        """Wait until a worker that had registered has no open connection left."""
        await self.wait_for(lambda: bool(self.disconnections) and not self._connections, timeout)

    async def wait_worker_status(self, timeout: float = 10.0) -> WorkerStatusUpdate:
        """Wait for the next `update_worker` after this call."""
        seen = len(self.worker_statuses)
        await self.wait_for(lambda: len(self.worker_statuses) > seen, timeout)
        return self.worker_statuses[-1]

    async def wait_job_status(self, job_id: str, status: str, timeout: float = 10.0) -> JobStatusUpdate:
        def _match() -> JobStatusUpdate | None:
            return next((u for u in self.job_statuses if u.job_id == job_id and u.status == status), None)

        await self.wait_for(lambda: _match() is not None, timeout)
        found = _match()
        assert found is not None
        return found

    def job_status_history(self, job_id: str) -> list[str]:
        return [u.status for u in self.job_statuses if u.job_id == job_id]

    # -- driving the worker ----------------------------------------------------------------------

    async def offer_job(
        self,
        *,
        metadata: str = "",
        room_name: str = "room-1",
        agent_name: str = "",
        job_id: str | None = None,
        timeout: float = 10.0,
    ) -> AvailabilityAnswer:
        """Send an AvailabilityRequest to the current worker and return its answer."""
        conn = self._current_connection()
        now_ns = time.time_ns()
        job = agent.Job(
            id=job_id or _new_id("AJ_"),
            dispatch_id=_new_id("AD_"),
            type=agent.JobType.JT_ROOM,
            room=models.Room(sid=_new_id("RM_"), name=room_name),
            metadata=metadata,
            agent_name=agent_name,
            state=agent.JobState(
                status=agent.JobStatus.JS_RUNNING,
                worker_id=conn.registration.worker_id,
                started_at=now_ns,
                updated_at=now_ns,
            ),
        )
        if job.id in self._offers:
            raise ValueError(f"job {job.id} was already offered")
        offer = _Offer(
            job=job,
            worker_id=conn.registration.worker_id,
            answer=asyncio.get_running_loop().create_future(),
        )
        self._offers[job.id] = offer
        await conn.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(offer.answer)
        except TimeoutError:
            # a late answer is still recorded in `answers`; the offer itself is over
            offer.answer.cancel()
            raise

    async def assign_job(self, job_id: str) -> JobAssignmentRecord:
        """Send the JobAssignment for a job the worker accepted (as the server does right after)."""
        offer = self._offers.get(job_id)
        if offer is None or not offer.answer.done() or offer.answer.cancelled():
            raise ValueError(f"job {job_id} has no availability answer")
        answer = offer.answer.result()
        if not answer.available:
            raise ValueError(f"job {job_id} was not accepted by the worker")
        if offer.assigned:
            raise ValueError(f"job {job_id} is already assigned")
        conn = self._connections.get(offer.worker_id)
        if conn is None:
            raise RuntimeError(f"worker {offer.worker_id} is no longer connected")

        token = self._agent_token(offer.job.room.name, answer, conn.registration)
        assignment = agent.JobAssignment(job=offer.job, url=self.url, token=token)
        await conn.send(agent.ServerMessage(assignment=assignment))
        offer.assigned = True
        record = JobAssignmentRecord(
            job_id=job_id,
            worker_id=offer.worker_id,
            room_name=offer.job.room.name,
            url=self.url,
            token=token,
            sent_at=time.monotonic(),
        )
        self.assignments.append(record)
        self._notify()
        return record

    async def terminate_job(self, job_id: str) -> None:
        offer = self._offers.get(job_id)
        if offer is None or not offer.assigned:
            raise ValueError(f"job {job_id} is not assigned")
        conn = self._connections.get(offer.worker_id)
        if conn is None:
            raise RuntimeError(f"worker {offer.worker_id} is no longer connected")
        await conn.send(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))
        self.terminations.append(job_id)
        self._notify()

    async def drop_connection(self) -> None:
        """Close the current worker's websocket from the server side (to exercise reconnects)."""
        conn = self._current_connection()
        await conn.ws.close(code=1011, message=b"dropped by test")

    # -- internals -------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    def _current_connection(self) -> _Connection:
        if not self._connections:
            raise RuntimeError("no registered worker is connected")
        return next(reversed(self._connections.values()))

    def _agent_token(self, room_name: str, answer: AvailabilityAnswer, registration: Registration) -> str:
        perms = registration.permissions
        attributes = dict(answer.participant_attributes)
        attributes[AGENT_NAME_ATTRIBUTE] = registration.agent_name
        return (
            api.AccessToken(self._api_key, self._api_secret)
            .with_identity(answer.participant_identity)
            .with_name(answer.participant_name)
            .with_metadata(answer.participant_metadata)
            .with_attributes(attributes)
            .with_kind("agent")
            .with_ttl(AGENT_TOKEN_TTL)
            .with_grants(
                api.VideoGrants(
                    room_join=True,
                    agent=True,
                    room=room_name,
                    can_subscribe=perms.can_subscribe,
                    can_publish=perms.can_publish,
                    can_publish_data=perms.can_publish_data,
                    hidden=perms.hidden,
                    can_update_own_metadata=perms.can_update_metadata,
                )
            )
            .to_jwt()
        )

    def _reject(self, reason: str) -> web.Response:
        self.rejected_connections.append(RejectedConnection(reason=reason, at=time.monotonic()))
        self._notify()
        return web.Response(status=401, text=reason)

    def _check_auth(self, request: web.Request) -> str | None:
        """Return why the request is refused, or None when its token is acceptable."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "missing bearer token"
        try:
            claims = self._verifier.verify(token)
        except (jwt.PyJWTError, ValueError) as e:
            # the exception class names the failure (bad signature, expired, wrong issuer)
            # without echoing any part of the token
            return f"invalid token: {type(e).__name__}"
        if claims.video is None or claims.video.agent is not True:
            return "token lacks the agent grant"
        return None

    async def _handle_agent(self, request: web.Request) -> web.StreamResponse:
        refusal = self._check_auth(request)
        if refusal is not None:
            return self._reject(refusal)

        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            conn = await self._register(ws)
            if conn is None:
                await ws.close()
                return ws
            try:
                await self._serve(conn)
            finally:
                self._connections.pop(conn.registration.worker_id, None)
                self.disconnections.append((conn.registration.worker_id, time.monotonic()))
                for offer in self._offers.values():
                    if offer.worker_id == conn.registration.worker_id and not offer.answer.done():
                        offer.answer.set_exception(ConnectionError(f"worker {offer.worker_id} disconnected"))
                self._notify()
            return ws
        finally:
            self._handlers.discard(task)

    async def _register(self, ws: web.WebSocketResponse) -> _Connection | None:
        try:
            async with asyncio.timeout(self._handshake_timeout):
                frame = await ws.receive()
        except TimeoutError:
            return None
        if frame.type != WSMsgType.BINARY:
            return None
        msg = agent.WorkerMessage()
        msg.ParseFromString(frame.data)
        if msg.WhichOneof("message") != "register":
            return None

        req = msg.register
        perms = models.ParticipantPermission()
        if req.HasField("allowed_permissions"):
            perms.CopyFrom(req.allowed_permissions)
        else:
            # the server's default when a worker states no permissions
            perms.can_subscribe = perms.can_publish = perms.can_publish_data = True
            perms.can_update_metadata = True

        registration = Registration(
            worker_id=_new_id("AW_"),
            agent_name=req.agent_name,
            job_type=agent.JobType.Name(req.type),
            version=req.version,
            namespace=req.namespace,
            deployment=req.deployment,
            permissions=perms,
            received_at=time.monotonic(),
        )
        conn = _Connection(ws=ws, registration=registration)
        server_info = models.ServerInfo(
            edition=models.ServerInfo.Edition.Standard,
            version="test-double",
            protocol=SERVER_PROTOCOL,
            region=self._region,
            node_id=_new_id("ND_"),
            agent_protocol=1,
        )
        await conn.send(
            agent.ServerMessage(
                register=agent.RegisterWorkerResponse(worker_id=registration.worker_id, server_info=server_info)
            )
        )
        self._connections[registration.worker_id] = conn
        self.registrations.append(registration)
        self._notify()
        return conn

    async def _serve(self, conn: _Connection) -> None:
        worker_id = conn.registration.worker_id
        async for frame in conn.ws:
            if frame.type != WSMsgType.BINARY:
                continue
            msg = agent.WorkerMessage()
            msg.ParseFromString(frame.data)
            kind = msg.WhichOneof("message")
            now = time.monotonic()
            if kind == "availability":
                self._on_availability(msg.availability, now)
            elif kind == "update_worker":
                u = msg.update_worker
                self.worker_statuses.append(
                    WorkerStatusUpdate(
                        worker_id=worker_id,
                        status=agent.WorkerStatus.Name(u.status),
                        load=u.load,
                        job_count=u.job_count,
                        draining=u.draining,
                        received_at=now,
                    )
                )
            elif kind == "update_job":
                j = msg.update_job
                self.job_statuses.append(
                    JobStatusUpdate(
                        worker_id=worker_id,
                        job_id=j.job_id,
                        status=agent.JobStatus.Name(j.status),
                        error=j.error,
                        received_at=now,
                    )
                )
            elif kind == "ping":
                await conn.send(
                    agent.ServerMessage(
                        pong=agent.WorkerPong(last_timestamp=msg.ping.timestamp, timestamp=int(time.time() * 1000))
                    )
                )
            elif kind is not None:
                self.other_messages.append(
                    WorkerMessageRecord(worker_id=worker_id, kind=kind, message=msg, received_at=now)
                )
            self._notify()

    def _on_availability(self, res: agent.AvailabilityResponse, now: float) -> None:
        answer = AvailabilityAnswer(
            job_id=res.job_id,
            available=res.available,
            terminate=res.terminate,
            participant_identity=res.participant_identity,
            participant_name=res.participant_name,
            participant_metadata=res.participant_metadata,
            participant_attributes=dict(res.participant_attributes),
            received_at=now,
        )
        self.answers.append(answer)
        offer = self._offers.get(res.job_id)
        if offer is not None and not offer.answer.done():
            offer.answer.set_result(answer)
