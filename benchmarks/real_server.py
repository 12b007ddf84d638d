"""The real media path: voice-to-voice and density at real WebRTC callers, on a real livekit-server.

`python -m benchmarks.real_server [--short] [--json PATH]` (also `python -m benchmarks.run --only real_server`).
Everything runs in a private network namespace (tests/e2e/network.py; root, as CI): the pinned livekit-server
(tests/e2e/livekit_server.py), the provider doubles as real servers (tests/e2e/providers.py), the real
`voice-worker start` (tests/e2e/worker_process.py) with the example catalog pointed at the doubles, a minimal
stock livekit-agents 1.8.9 agent (benchmarks/stock_agent.py: its own `AgentSession`, the same plugins and
doubles, its own agent name, dispatched by the token's room configuration) and real callers (tests/e2e/caller.py:
the `livekit` SDK publishing espeak-ng speech in 10 ms frames and timing every frame it hears).

Both agents answer as the example sales agent: 500 ms endpointing, VAD turn detection, Deepgram STT and TTS,
an OpenAI-compatible LLM. The doubles' latencies are set here (`LATENCIES`): the STT's final transcript comes
after 100 ms of silence in the audio it receives (the Deepgram double finalises on audio time), the LLM's first
token 300 ms after the request and a word every 20 ms, the TTS's first audio 100 ms after its flush.

1. Voice-to-voice: end of the caller's speech in the published audio -> the first agent audio frame the
   caller receives above `SPEECH_RMS`, one call at a time, worker and stock calls alternating (the machine's
   other load falls on both alike). "Overhead" = voice-to-voice - the configured endpointing - the provider
   time on the critical path after it: both agents run livekit's preemptive generation (the LLM starts on the
   STT final, the TTS once the turn is confirmed), so that is max(endpointing, STT + LLM TTFT) + TTS first
   byte - endpointing (here 100 ms). Everything else is overhead: the VAD's lag in letting go of the speech,
   Opus, jitter buffers, resampling, the FFI, the event loop, the load.
2. Density: `--levels` concurrent calls against one fresh worker process per level (the worker as deployed:
   `JOB_EXECUTOR=thread`; stock with its default process executor), callers `CALLERS_PER_PROCESS` to a caller
   process, calls started over `STAGGER_S`. A level holds while no call goes unanswered and the overhead p95
   stays within the same agent's one-call p95 (section 1) + `DENSITY_MARGIN_MS`; each agent's sweep stops at
   its first level that does not hold. CPU is the worker's whole process tree (job processes included) over
   the window in which every call is active; PSS per call = (peak PSS of the tree - its PSS once registered,
   before any call) / calls.
With two or more cores the workers are pinned (`sched_setaffinity`, inherited by every process and thread
they start) to the last core and livekit-server, the doubles and the callers to the others, so the density
figure is calls per worker core; the JSON records the pinning, the core count and the load average.
The worker's session records give its own view of each turn (livekit's `e2e_latency`), so the JSON also splits
the voice-to-voice time into the agent's part and the media path's; livekit's "event loop blocked" warnings of
each batch are summarised by where they happened. `--short` (CI) runs one call of each agent and one level of
two calls on the agents already running; its figures only prove the path works.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil  # type: ignore[import-untyped]  # no stubs, and types-psutil is not a dev dependency
import yaml
from aiohttp import web

from benchmarks import generated_block
from benchmarks.cold_start import IMPORT_FLOOR, import_floor_s
from benchmarks.simulator import percentile
from contract.session_type import SessionType
from tests.doubles.deepgram_server import DeepgramServerDouble, ListenSession, Utterance, _ListenConnection
from tests.doubles.openai_server import Reply
from tests.e2e.brain import Brain
from tests.e2e.caller import SPEECH_RMS
from tests.e2e.catalog import EXAMPLES, write_catalog
from tests.e2e.livekit_server import LiveKitServer, installed_version, pinned_version, running_livekit_server
from tests.e2e.network import enter_test_network
from tests.e2e.providers import ProviderDoubles
from tests.e2e.worker_process import WorkerEnv, WorkerProcess, terminate
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODULE = "benchmarks.real_server"
Impl = Literal["worker", "stock"]
IMPLS: tuple[Impl, ...] = ("worker", "stock")

SALES_AGENT = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02"
SALES_YAML = EXAMPLES / "sales.yaml"
# what the caller says (the STT double transcribes every utterance as this) and what the LLM double answers:
# no keyword of the sales agent's keyword procedures, so turn 1 runs its router like a real first question
QUESTION = "I would like to know what the pro plan costs"
ANSWER = "Pro is sixty dollars per seat per month."


@dataclass(frozen=True)
class Latencies:
    """The doubles' configured latencies, in ms."""

    stt_final: float = 100.0
    llm_ttft: float = 300.0
    llm_token: float = 20.0
    tts_first_byte: float = 100.0


LATENCIES = Latencies()
DENSITY_MARGIN_MS = 60.0
# issue #21's goal on the real path: calls held per worker core (overhead p95 within the margin, none unanswered)
DENSITY_GOAL_PER_CORE = 30
DEFAULT_LEVELS = (1, 3, 5, 7, 10, 15, 20, 25, 30, 40)
CALLERS_PER_PROCESS = 5
STAGGER_S = 5.0
# the TTS double renders this many seconds of tone per character (shorter replies keep the run short)
TTS_SECONDS_PER_CHAR = 0.05
SAMPLE_INTERVAL_S = 0.5
# --profile: seconds after the last call started before py-spy starts (every greeting said by then)
PROFILE_SETTLE_S = 4.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")

log = logging.getLogger("voice_worker.bench.real_server")


# -- the provider doubles, with the latencies set here ---------------------------------------------------


class _BenchListen(_ListenConnection):
    """One streaming-STT websocket of the benchmark's Deepgram double. Two changes to the test double, both so
    that concurrent calls each get their own transcript at a configured time:
    - it finalises after `stt_final` ms of silence in the received audio, whatever endpointing the client asks
      for (livekit's plugin asks for 25 ms, which splits one spoken question at every word gap);
    - the transcript is per connection, not from the double's shared queue: a speech segment that starts after
      a pause of `UTTERANCE_GAP_S` is a new question and is transcribed as `QUESTION`; segments after shorter
      pauses are breaths inside the same question and come back empty, as Deepgram answers for noise."""

    UTTERANCE_GAP_S = 0.3

    def __init__(self, server: DeepgramServerDouble, ws: web.WebSocketResponse, session: ListenSession) -> None:
        super().__init__(server, ws, session)
        self._endpointing_ms = int(LATENCIES.stt_final)
        self._previous_end = -1e9

    async def _finalize(self, *, speech_final: bool, from_finalize: bool = False) -> None:
        if not self._in_speech:
            await super()._finalize(speech_final=speech_final, from_finalize=from_finalize)
            return
        new_question = self._speech_start - self._previous_end >= self.UTTERANCE_GAP_S
        self._previous_end = self._last_voice_end
        self._in_speech = False
        utterance = Utterance(QUESTION if new_question else "")
        await self._send(
            self._results(utterance, is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        )


class BenchDeepgram(DeepgramServerDouble):
    async def _handle_listen(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await super()._handle_listen(request)
        self._record(request, "listen_ws", b"")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = ListenSession(query=dict(request.query))
        # the session's messages are not kept: a density run would hold every call's results in memory
        await _BenchListen(self, ws, session).run()
        return ws


def start_doubles() -> ProviderDoubles:
    doubles = ProviderDoubles(webhook_secret=secrets.token_urlsafe(24), tts_seconds_per_char=TTS_SECONDS_PER_CHAR)
    doubles.deepgram = BenchDeepgram(
        tts_seconds_per_char=TTS_SECONDS_PER_CHAR, tts_ttfb_ms=LATENCIES.tts_first_byte, default_transcript=QUESTION
    )
    brain = Brain(procedure="pricing_question", answer=ANSWER)

    def respond(body: dict[str, Any]) -> Reply:
        reply = brain(body)
        if reply.text == ANSWER:  # the agent's answer (routers and post-call keep the brain's own timing)
            return replace(reply, ttft_ms=LATENCIES.llm_ttft, token_interval_ms=LATENCIES.llm_token)
        return reply

    doubles.start()
    doubles.call(lambda: doubles.openai.set_chat_responder(respond))
    return doubles


def forget_requests(doubles: ProviderDoubles) -> None:
    """The doubles record every request; a long run need not keep them."""

    def clear() -> None:
        doubles.openai.requests.clear()
        doubles.deepgram.requests.clear()
        doubles.deepgram.spoken_texts.clear()
        doubles.deepgram.listen_sessions.clear()

    doubles.call(clear)


def sales_pipeline() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SALES_YAML.read_text())
    revision = next(r for r in doc["revisions"] if r["id"] == doc["active_revision_id"])
    return {"pipeline": revision["pipeline"], "system_prompt": revision["system_prompt"]}


def endpointing_ms() -> float:
    return float(sales_pipeline()["pipeline"]["endpointing_min_delay_ms"])


def critical_providers_ms(endpointing: float, lat: Latencies = LATENCIES) -> float:
    """Provider time on the critical path after the endpointing wait (see the module doc)."""
    return max(endpointing, lat.stt_final + lat.llm_ttft) + lat.tts_first_byte - endpointing


# -- pinning -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    enabled: bool
    worker_cpus: tuple[int, ...]
    other_cpus: tuple[int, ...]

    @staticmethod
    def plan(enabled: bool) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2:
            return Pinning(False, tuple(cpus), tuple(cpus))
        return Pinning(True, (cpus[-1],), tuple(cpus[:-1]))

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned (every process may run on every core)"
        return f"workers pinned to CPU {','.join(map(str, self.worker_cpus))}; livekit-server, doubles and callers " + (
            f"to CPU {','.join(map(str, self.other_cpus))}"
        )


@contextlib.contextmanager
def affinity(cpus: Sequence[int]) -> Iterator[None]:
    """Run the block with this thread on `cpus`: a process started inside inherits them (and every process and
    thread it starts inherits them in turn); other threads of this process are not affected."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- the agents' processes -----------------------------------------------------------------------------------


class StockWorker:
    """benchmarks/stock_agent.py as `python -m benchmarks.stock_agent start`."""

    def __init__(self, env: WorkerEnv, doubles: ProviderDoubles, log_path: Path) -> None:
        self.agent_name = "stock-agent-" + secrets.token_hex(3)
        self.log_path = log_path
        sales = sales_pipeline()
        pipeline = sales["pipeline"]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
        environ.update(
            LIVEKIT_URL=env.livekit.url,
            LIVEKIT_API_KEY=env.livekit.api_key,
            LIVEKIT_API_SECRET=env.livekit.api_secret,
            STOCK_AGENT_NAME=self.agent_name,
            STOCK_HEALTH_PORT=str(free_port()),
            STOCK_OPENAI_BASE_URL=doubles.openai.base_url,
            STOCK_LLM_MODEL=pipeline["model_chain"][0]["model"],
            STOCK_DEEPGRAM_LISTEN_URL=doubles.deepgram.listen_url,
            STOCK_DEEPGRAM_SPEAK_URL=doubles.deepgram.speak_url,
            STOCK_STT_MODEL=pipeline["stt_chain"][0]["model"],
            STOCK_TTS_MODEL=pipeline["tts_chain"][0]["model"],
            STOCK_ENDPOINTING_S=str(pipeline["endpointing_min_delay_ms"] / 1000),
            STOCK_INSTRUCTIONS=sales["system_prompt"],
            STOCK_GREETING=pipeline["first_speaking"]["text"],
            OPENAI_API_KEY="sk-bench-" + secrets.token_hex(8),
            DEEPGRAM_API_KEY="dg-bench-" + secrets.token_hex(8),
        )
        self._log = open(log_path, "ab")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.stock_agent", "start"],
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 60.0) -> float:
        start = time.monotonic()
        while "registered worker" not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() - start > timeout:
                raise RuntimeError(f"stock agent did not register:\n{_tail(self.log_path, 3000)}")
            time.sleep(0.2)
        return time.monotonic() - start

    def stop(self, timeout: float = 30.0) -> None:
        terminate(self.process, timeout)
        self._log.close()


def import_floor(pin: Pinning, runs: int) -> dict[str, Any]:
    """benchmarks/cold_start.py's import floor, timed on the workers' core: no agent starts faster than this there."""
    with affinity(pin.worker_cpus):
        times = [import_floor_s(Path(sys.prefix)) for _ in range(runs)]
    return {"p50": round(percentile(times, 50), 2), "max": round(max(times), 2), "runs": runs}


@dataclass
class Agents:
    """One running agent of each kind, as the callers reach them."""

    worker: WorkerProcess | None = None
    stock: StockWorker | None = None
    ready_s: float | None = None
    """Cold start: spawn -> registered with LiveKit and taking calls (the worker: its `/ready` answering 200 and
    its last load report, if any, below capacity; stock: its "registered worker" log line). Neither includes the
    settling that follows (the worker's 3 s of steady "below capacity", stock's 3 s for its job processes)."""

    def pid(self, impl: Impl) -> int:
        proc = self.worker.process if impl == "worker" else self.stock.process  # type: ignore[union-attr]  # the kind asked for is running
        return proc.pid

    def log_path(self, impl: Impl) -> Path:
        return self.worker.log_path if impl == "worker" else self.stock.log_path  # type: ignore[union-attr]  # the kind asked for is running

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.stock is not None:
            self.stock.stop()


def start_agent(
    impl: Impl, env: WorkerEnv, doubles: ProviderDoubles, pin: Pinning, workdir: Path, **extra_env: str
) -> Agents:
    """A fresh agent process of `impl`, pinned to the workers' cores, registered and taking calls."""
    spawned = time.monotonic()
    with affinity(pin.worker_cpus):
        if impl == "worker":
            worker = WorkerProcess(
                env,
                workdir / f"worker-{uuid.uuid4().hex[:6]}.log",
                # the worker as deployed (deploy/k8s: one thread-executor worker process per core), its call
                # capacity out of the way: this benchmark finds the limit instead of the configured one
                **{"JOB_EXECUTOR": "thread", "WORKER_CALL_CAPACITY": "1000", **extra_env},
            )
            agents = Agents(worker=worker)
        else:
            agents = Agents(stock=StockWorker(env, doubles, workdir / f"stock-{uuid.uuid4().hex[:6]}.log"))
    try:
        if agents.worker is not None:
            agents.worker.wait_ready()
            agents.worker.wait_available(stable_s=0.0)
            agents.ready_s = time.monotonic() - spawned
            # not timed, as stock's warm-up sleep below is not: its load reports say it takes calls 3 s in a row
            agents.worker.wait_available()
        if agents.stock is not None:
            agents.stock.wait_ready()
            agents.ready_s = time.monotonic() - spawned
            time.sleep(3.0)  # its job processes warm up (silero) after registering: the worker waits for this too
    except BaseException:
        agents.stop()
        raise
    return agents


# -- measuring process trees ---------------------------------------------------------------------------------


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return 0


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of /proc/<pid>/stat (1-based, counting pid and comm)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_pids(root: int) -> list[int]:
    try:
        return [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
    except psutil.Error:
        return []


@dataclass
class TreeSample:
    at: float
    cpu: dict[int, float]
    pss_kb: int
    rss_kb: int


def sample_tree(root: int, memory: bool = True) -> TreeSample:
    pids = tree_pids(root)
    cpu = {pid: c for pid in pids if (c := _cpu_s(pid)) is not None}
    return TreeSample(
        at=time.monotonic(),
        cpu=cpu,
        pss_kb=sum(_pss_kb(p) for p in cpu) if memory else 0,
        rss_kb=sum(_rss_kb(p) for p in cpu) if memory else 0,
    )


class Sampler:
    """CPU and memory of a few process trees every `interval` s, in a thread (a busy event loop must not skew the
    sampling it is judged by). `roots` is read at every sample, so callers can add their processes."""

    def __init__(self, roots: dict[str, int], interval: float = SAMPLE_INTERVAL_S) -> None:
        self.roots = roots
        self.interval = interval
        self.samples: dict[str, list[TreeSample]] = {}
        # (monotonic time, busy and total CPU seconds of each core): whether the harness's core was the limit
        self.cores: list[tuple[float, list[tuple[float, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="real-server-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in list(self.roots.items()):
                self.samples.setdefault(name, []).append(sample_tree(pid, memory=name == "agent"))
            times = psutil.cpu_times(percpu=True)
            self.cores.append((time.monotonic(), [(sum(t) - t.idle - t.iowait, sum(t)) for t in times]))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def core_busy_percent(self, cores: Sequence[int], start: float, end: float) -> float | None:
        """How busy `cores` were over [start, end] (whatever ran there), in % of their capacity."""
        window = [c for c in self.cores if start <= c[0] <= end]
        if len(window) < 2:
            return None
        (_, first), (_, last) = window[0], window[-1]
        busy = sum(last[i][0] - first[i][0] for i in cores)
        total = sum(last[i][1] - first[i][1] for i in cores)
        return 100 * busy / total if total > 0 else None

    def window(self, name: str, start: float, end: float) -> list[TreeSample]:
        return [s for s in self.samples.get(name, []) if start <= s.at <= end]

    def cpu_percent(self, prefix: str, start: float, end: float) -> float | None:
        """CPU of every tree whose name starts with `prefix` over [start, end], in % of one core."""
        total, any_window = 0.0, False
        for name in self.samples:
            if not name.startswith(prefix):
                continue
            window = self.window(name, start, end)
            if len(window) < 2:
                continue
            first, last = window[0], window[-1]
            # processes alive at both ends of the window (job processes live as long as their call)
            total += (
                100 * sum(last.cpu[p] - first.cpu[p] for p in first.cpu.keys() & last.cpu.keys()) / (last.at - first.at)
            )
            any_window = True
        return total if any_window else None


def loop_blocks(log_path: Path, offset: int) -> dict[str, Any]:
    """livekit's "event loop blocked for N ms at <where>" warnings in an agent's JSON log after `offset`: while a
    call's loop is blocked (in thread mode: any call's, through the GIL) no audio moves, so they explain a tail."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    places: dict[str, list[float]] = {}
    for line in text.splitlines():
        if '"event loop blocked for ' not in line:
            continue
        with contextlib.suppress(json.JSONDecodeError, ValueError, IndexError):
            message = json.loads(line)["message"]
            ms = float(message.split("event loop blocked for ", 1)[1].split("ms", 1)[0])
            where = message.split(" at ", 1)[1].split(";", 1)[0]
            # the module, not where this machine installed it
            for prefix in ("site-packages/", "lib/python3."):
                if prefix in where:
                    where = '"' + where.split(prefix, 1)[1].split("/", 1 if prefix.startswith("lib/") else 0)[-1]
            places.setdefault(where, []).append(ms)
    top = sorted(places.items(), key=lambda kv: -sum(kv[1]))[:5]
    return {
        "count": sum(len(v) for v in places.values()),
        "total_ms": round(sum(sum(v) for v in places.values())),
        "top": [{"at": where, "count": len(v), "total_ms": round(sum(v)), "max_ms": max(v)} for where, v in top],
    }


# -- the callers (a caller process runs several) -------------------------------------------------------------


@dataclass
class CallerSpec:
    impl: Impl
    indices: list[int]
    """The calls this process makes; call `i` starts at `start_at + i * step_s` (monotonic clock, which every
    process of the machine shares)."""
    start_at: float
    step_s: float
    turns: int
    speech_path: str
    stock_agent_name: str
    result_path: str
    join_timeout_s: float = 20.0
    answer_timeout_s: float = 10.0


@dataclass
class TurnResult:
    said_at: float
    answer_at: float | None

    @property
    def voice_to_voice_ms(self) -> float | None:
        return None if self.answer_at is None else (self.answer_at - self.said_at) * 1000


@dataclass
class CallResult:
    impl: str
    index: int
    session_id: str | None = None
    """The worker's session (its record holds the agent's own view of each turn's latency)."""
    connected_at: float | None = None
    joined_s: float | None = None
    greeting_at: float | None = None
    ended_at: float | None = None
    turns: list[TurnResult] = field(default_factory=list)
    error: str | None = None


async def _mint_all(spec: CallerSpec) -> list[tuple[str, str, str | None]]:
    """(livekit url, token) for each call, before any call starts: the door's own minting for the worker (signed
    dispatch, a live session record, as `voice-worker web-call --session-type live`), a plain LiveKit token with
    a RoomAgentDispatch for the stock agent."""
    if spec.impl == "worker":
        from catalog.loader import CatalogStore
        from door.core import CallTarget, WebCallService
        from door.keys import ApiKey, KeyScopes
        from door.sessions import default_session_creator
        from door.settings import load_door_settings

        settings = load_door_settings()
        operator = ApiKey(name="real-server-bench", sha256="0" * 64, scopes=KeyScopes(agents=("*",), teams=("*",)))
        service = WebCallService(settings, CatalogStore(settings.catalog_path), default_session_creator(settings))
        tokens: list[tuple[str, str, str | None]] = []
        for _ in spec.indices:
            minted = await service.start_call(
                operator, CallTarget(kind="agent", id=uuid.UUID(SALES_AGENT)), None, session_type=SessionType.LIVE
            )
            response = minted.as_web_call_response()
            tokens.append((response["livekit_url"], response["access_token"], response["session_id"]))
        return tokens
    return [(*_stock_token(spec, index), None) for index in spec.indices]


def _stock_token(spec: CallerSpec, index: int) -> tuple[str, str]:
    from livekit import api

    token = (
        api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
        .with_identity(f"caller-{index}-{secrets.token_hex(3)}")
        .with_grants(api.VideoGrants(room_join=True, room=f"stock-{index}-{secrets.token_hex(6)}"))
        .with_room_config(api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=spec.stock_agent_name)]))
    )
    return os.environ["LIVEKIT_URL"], token.to_jwt()


def _bench_caller(url: str, token: str) -> Any:
    """tests/e2e/caller.py's `Caller`, its waits made cheap for a long call: the test caller scans everything it
    has heard since the call began on every frame (100 a second), which at a few dozen callers in one process
    costs more CPU than the calls themselves. `heard` is in time order, so the frames after `since` are found by
    bisection; what the caller publishes and hears, and how each frame is timed, is unchanged."""
    import bisect

    from tests.e2e.caller import Caller, Heard

    class BenchCaller(Caller):
        def _after(self, since: float) -> list[Heard]:
            return self.heard[bisect.bisect_left(self.heard, since, key=lambda h: h.at) :]

        def heard_speech_after(self, since: float) -> Heard | None:
            return next((h for h in self._after(since) if h.rms >= SPEECH_RMS), None)

        def silent_after(self, since: float, window_s: float) -> bool:
            recent = self._after(since)
            if not recent or recent[-1].at - since < window_s:
                return False
            return all(h.rms < SPEECH_RMS for h in self._after(recent[-1].at - window_s))

    return BenchCaller(url, token)


async def _one_call(spec: CallerSpec, index: int, minted: tuple[str, str, str | None], pcm: np.ndarray) -> CallResult:
    url, token, session_id = minted
    result = CallResult(impl=spec.impl, index=index, session_id=session_id)
    await asyncio.sleep(max(0.0, spec.start_at + index * spec.step_s - time.monotonic()))
    caller = _bench_caller(url, token)
    try:
        await caller.connect(timeout=spec.join_timeout_s)
        result.connected_at = caller.connected_at
        result.joined_s = await caller.wait_agent(timeout=spec.join_timeout_s)
        assert caller.connected_at is not None
        greeting = await caller.wait_speech(since=caller.connected_at, timeout=spec.join_timeout_s)
        result.greeting_at = greeting.at
        await caller.wait_quiet(since=greeting.at)
        for _ in range(spec.turns):
            said_at = await caller.say(pcm)
            turn = TurnResult(said_at=said_at, answer_at=None)
            result.turns.append(turn)
            answer = await caller.wait_speech(since=said_at, timeout=spec.answer_timeout_s)
            turn.answer_at = answer.at
            await caller.wait_quiet(since=answer.at)
    except (AssertionError, TimeoutError, ConnectionError, OSError, RuntimeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.ended_at = time.monotonic()
        with contextlib.suppress(Exception):
            await caller.hang_up()
    return result


async def _run_callers(spec: CallerSpec) -> list[CallResult]:
    from tests.doubles.wav_fixtures import read_wav

    pcm, _rate = read_wav(Path(spec.speech_path))
    tokens = await _mint_all(spec)
    return list(
        await asyncio.gather(*(_one_call(spec, i, minted, pcm) for i, minted in zip(spec.indices, tokens, strict=True)))
    )


def caller_main(spec_json: str) -> None:
    spec = CallerSpec(**json.loads(spec_json))
    results = asyncio.run(_run_callers(spec))
    Path(spec.result_path).write_text(json.dumps([asdict(r) for r in results]))


# -- one batch of calls ------------------------------------------------------------------------------------


@dataclass
class Batch:
    """`calls` concurrent calls against one agent, and what its process tree and the rest of the machine did."""

    impl: str
    calls: int
    results: list[CallResult]
    agent_cpu_percent: float | None = None
    agent_pss_idle_mb: float | None = None
    agent_pss_peak_mb: float | None = None
    agent_rss_idle_mb: float | None = None
    agent_rss_peak_mb: float | None = None
    agent_processes_at_peak: int | None = None
    callers_cpu_percent: float | None = None
    server_cpu_percent: float | None = None
    harness_cores_busy_percent: float | None = None
    window_s: float | None = None
    caller_processes: int = 0
    loop_blocked: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None

    def turns(self) -> list[TurnResult]:
        return [t for r in self.results for t in r.turns]


def run_batch(
    ctx: World,
    agents: Agents,
    impl: Impl,
    calls: int,
    *,
    turns: int,
    stagger_s: float,
    first_index: int = 0,
    profile_s: float | None = None,
) -> Batch:
    """`calls` calls against `agents`' `impl`, started over `stagger_s`, from caller processes of up to
    `CALLERS_PER_PROCESS` calls each, while the agent's process tree, livekit-server and the callers are sampled."""
    agent_pid = agents.pid(impl)
    log_offset = agents.log_path(impl).stat().st_size
    idle = sample_tree(agent_pid)
    roots: dict[str, int] = {"agent": agent_pid, "server": ctx.livekit.process.pid}
    processes = -(-calls // CALLERS_PER_PROCESS)
    # call i in process i % P: every process ramps up with the others instead of one after another
    groups = [[first_index + i for i in range(p, calls, processes)] for p in range(processes)]
    step = stagger_s / calls if calls > 1 else 0.0
    out = Path(tempfile.mkdtemp(prefix="callers-", dir=ctx.workdir))
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    with Sampler(roots) as sampler:
        # a caller process needs a few seconds to import, mint and load the speech: calls start after that
        start_at = time.monotonic() + 4.0 + 0.5 * processes
        for p, members in enumerate(groups):
            spec = CallerSpec(
                impl=impl,
                indices=members,
                start_at=start_at - first_index * step,
                step_s=step,
                turns=turns,
                speech_path=str(ctx.speech_path),
                stock_agent_name=ctx.stock_agent_name,
                result_path=str(out / f"callers-{p}.json"),
            )
            with affinity(ctx.pin.other_cpus), open(out / f"callers-{p}.log", "ab") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", MODULE, "--callers", json.dumps(asdict(spec))],
                    env=ctx.env.as_environ(),
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                )
            roots[f"callers-{p}"] = proc.pid
            procs.append((proc, Path(spec.result_path)))
        deadline = start_at + stagger_s + 60.0 + turns * 30.0
        profiler = None if profile_s is None else _start_profiler(ctx, agent_pid, start_at + stagger_s, profile_s)
        results: list[CallResult] = []
        for proc, path in procs:
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if path.exists():
                for raw in json.loads(path.read_text()):
                    raw["turns"] = [TurnResult(**t) for t in raw["turns"]]
                    results.append(CallResult(**raw))
            else:
                log.warning("caller process %d produced no result:\n%s", proc.pid, _tail(path.with_suffix(".log")))
    missing = calls - len(results)
    results += [CallResult(impl=impl, index=-1, error="caller process produced no result") for _ in range(missing)]
    batch = Batch(impl=impl, calls=calls, results=sorted(results, key=lambda r: r.index), caller_processes=len(procs))
    if profiler is not None:
        profiler[0].join()
        batch.profile = profiler[1]
    _fill_usage(batch, sampler, idle, ctx.pin.other_cpus)
    batch.loop_blocked = loop_blocks(agents.log_path(impl), log_offset)
    return batch


def _start_profiler(
    ctx: World, pid: int, all_started_at: float, seconds: float
) -> tuple[threading.Thread, dict[str, Any]]:
    """benchmarks/profile_split.py over `seconds` once every call of the batch has started and been greeted, from
    a thread on the non-worker cores (py-spy, started there, inherits them)."""
    from benchmarks.profile_split import profile_window

    found: dict[str, Any] = {}
    out = ctx.workdir / f"py-spy-{pid}.txt"

    def run() -> None:
        with affinity(ctx.pin.other_cpus):
            time.sleep(max(0.0, all_started_at + PROFILE_SETTLE_S - time.monotonic()))
            gc_before = _gc_totals(ctx.workdir, pid)
            found.update(profile_window(pid, seconds, out))
            gc_after = _gc_totals(ctx.workdir, pid)
        if gc_before and gc_after:
            window = gc_after["at"] - gc_before["at"]
            spent = [a - b for a, b in zip(gc_after["seconds"], gc_before["seconds"], strict=True)]
            found["gc"] = {
                "cpu_percent": round(100 * sum(spent) / window, 2) if window > 0 else None,
                "collections": [a - b for a, b in zip(gc_after["collections"], gc_before["collections"], strict=True)],
                "seconds_by_generation": [round(s, 3) for s in spent],
            }

    thread = threading.Thread(target=run, name="profiler", daemon=True)
    thread.start()
    return thread, found


def _gc_totals(workdir: Path, pid: int) -> dict[str, Any] | None:
    """The agent's garbage-collector totals, as benchmarks/gcprobe writes them (None without the probe)."""
    with contextlib.suppress(OSError, json.JSONDecodeError):
        return json.loads((workdir / f"gc-probe.{pid}").read_text())  # type: ignore[no-any-return]  # the probe writes a dict
    return None


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _fill_usage(batch: Batch, sampler: Sampler, idle: TreeSample, harness_cores: Sequence[int]) -> None:
    greeted = [r.greeting_at for r in batch.results if r.greeting_at is not None]
    ended = [r.ended_at for r in batch.results if r.ended_at is not None]
    if not greeted or not ended:
        return
    # every call active: from the last greeting to the first call's end; if they barely overlap, their span
    start, end = max(greeted), min(ended)
    if len(sampler.window("agent", start, end)) < 3:
        start, end = min(greeted), max(ended)
    window = sampler.window("agent", start, end)
    if len(window) < 2:
        return
    peak = max(sampler.samples.get("agent", []), key=lambda s: s.pss_kb)
    batch.window_s = window[-1].at - window[0].at
    batch.agent_cpu_percent = sampler.cpu_percent("agent", start, end)
    batch.callers_cpu_percent = sampler.cpu_percent("callers-", start, end)
    batch.server_cpu_percent = sampler.cpu_percent("server", start, end)
    batch.harness_cores_busy_percent = sampler.core_busy_percent(harness_cores, start, end)
    batch.agent_pss_idle_mb, batch.agent_rss_idle_mb = idle.pss_kb / 1024, idle.rss_kb / 1024
    batch.agent_pss_peak_mb, batch.agent_rss_peak_mb = peak.pss_kb / 1024, peak.rss_kb / 1024
    batch.agent_processes_at_peak = len(peak.cpu)


# -- the world ----------------------------------------------------------------------------------------------


@dataclass
class World:
    livekit: LiveKitServer
    doubles: ProviderDoubles
    env: WorkerEnv
    pin: Pinning
    workdir: Path
    speech_path: Path
    stock_agent_name: str = ""
    worker_env: dict[str, str] = field(default_factory=dict)
    """The worker's own settings for this run (`--worker-executor process`: JOB_EXECUTOR)."""


# -- summaries ----------------------------------------------------------------------------------------------


@dataclass
class TurnStats:
    impl: str
    calls: int
    turns: int
    unanswered: int
    failed_calls: int
    v2v_p50_ms: float | None
    v2v_p95_ms: float | None
    overhead_p50_ms: float | None
    overhead_p95_ms: float | None
    errors: list[str]

    @staticmethod
    def of(impl: str, results: Sequence[CallResult], calls: int, turns_per_call: int, deduct_ms: float) -> TurnStats:
        turns = [t for r in results if r.impl == impl for t in r.turns]
        v2v = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None]
        mine = [r for r in results if r.impl == impl]
        expected = calls * turns_per_call
        return TurnStats(
            impl=impl,
            calls=calls,
            turns=len(v2v),
            unanswered=expected - len(v2v),
            failed_calls=sum(1 for r in mine if r.error),
            v2v_p50_ms=percentile(v2v, 50),
            v2v_p95_ms=percentile(v2v, 95),
            overhead_p50_ms=None if not v2v else percentile([v - deduct_ms for v in v2v], 50),
            overhead_p95_ms=None if not v2v else percentile([v - deduct_ms for v in v2v], 95),
            errors=[r.error for r in mine if r.error][:5],
        )


def level_dict(batch: Batch, stats: TurnStats, limit_ms: float | None) -> dict[str, Any]:
    holds = (
        stats.unanswered == 0
        and stats.failed_calls == 0
        and stats.overhead_p95_ms is not None
        and (limit_ms is None or stats.overhead_p95_ms <= limit_ms)
    )
    per_call = (
        None
        if batch.agent_pss_peak_mb is None or batch.agent_pss_idle_mb is None
        else (batch.agent_pss_peak_mb - batch.agent_pss_idle_mb) / batch.calls
    )
    rss_per_call = (
        None
        if batch.agent_rss_peak_mb is None or batch.agent_rss_idle_mb is None
        else (batch.agent_rss_peak_mb - batch.agent_rss_idle_mb) / batch.calls
    )
    return {
        **asdict(stats),
        "holds": holds,
        "overhead_p95_limit_ms": limit_ms,
        "agent_cpu_percent": batch.agent_cpu_percent,
        "agent_cpu_per_call_percent": None
        if batch.agent_cpu_percent is None
        else batch.agent_cpu_percent / batch.calls,
        "agent_pss_idle_mb": batch.agent_pss_idle_mb,
        "agent_pss_peak_mb": batch.agent_pss_peak_mb,
        "agent_pss_per_call_mb": per_call,
        "agent_rss_idle_mb": batch.agent_rss_idle_mb,
        "agent_rss_peak_mb": batch.agent_rss_peak_mb,
        "agent_rss_per_call_mb": rss_per_call,
        "agent_processes_at_peak": batch.agent_processes_at_peak,
        "callers_cpu_percent": batch.callers_cpu_percent,
        "caller_processes": batch.caller_processes,
        "server_cpu_percent": batch.server_cpu_percent,
        # the callers, livekit-server and the provider doubles share these: near 100 % the harness is the limit
        "harness_cores_busy_percent": batch.harness_cores_busy_percent,
        "window_s": batch.window_s,
        "loop_blocked": batch.loop_blocked,
        "voice_to_voice_ms": [t.voice_to_voice_ms for t in batch.turns()],
    }


# -- the two sections -----------------------------------------------------------------------------------------


def voice_to_voice(
    world: World, agents: dict[Impl, Agents], *, rounds: int, turns: int, deduct_ms: float
) -> dict[str, Any]:
    """`rounds` single calls of each agent, alternating, `turns` turns each."""
    results: list[CallResult] = []
    blocked: dict[str, list[dict[str, Any]]] = {impl: [] for impl in IMPLS}
    for r in range(rounds):
        for impl in IMPLS:
            batch = run_batch(world, agents[impl], impl, 1, turns=turns, stagger_s=0.0, first_index=r)
            results += batch.results
            blocked[impl].append(batch.loop_blocked)
            log.warning("voice-to-voice %s call %d/%d: %s", impl, r + 1, rounds, _v2v_line(batch))
            forget_requests(world.doubles)
    stats = {impl: TurnStats.of(impl, results, rounds, turns, deduct_ms) for impl in IMPLS}
    w, s = stats["worker"], stats["stock"]
    return {
        "worker_split": worker_split(world, [r for r in results if r.impl == "worker"]),
        "rounds": rounds,
        "turns_per_call": turns,
        "stats": {impl: asdict(st) for impl, st in stats.items()},
        "ratio_stock_over_worker": {
            "v2v_p50": _ratio(s.v2v_p50_ms, w.v2v_p50_ms),
            "v2v_p95": _ratio(s.v2v_p95_ms, w.v2v_p95_ms),
            "overhead_p50": _ratio(s.overhead_p50_ms, w.overhead_p50_ms),
            "overhead_p95": _ratio(s.overhead_p95_ms, w.overhead_p95_ms),
        },
        "loop_blocked_per_call": blocked,
        "calls": [asdict(r) for r in results],
    }


def worker_split(world: World, results: Sequence[CallResult]) -> dict[str, Any]:
    """The worker's own view of its turns, from its session records: livekit's `e2e_latency` (the VAD's estimate
    of the end of speech -> the first audio frame the agent's output took), against what the caller measured. The
    difference is the media path both ways (Opus, the SFU, jitter buffers, resampling, the FFI) plus the error of
    the VAD's estimate of when the speech ended."""
    from tests.e2e.session_records import wait_for_record

    async def read() -> list[tuple[float, float]]:
        pairs: list[tuple[float, float]] = []
        for call in results:
            if call.session_id is None or call.error:
                continue
            record = await wait_for_record(world.env.database_url, call.session_id, timeout=15.0)
            agent = [m.end_of_speech_to_first_audio_ms for m in record.turn_metrics]
            agent_ms = [v for v in agent if v is not None]
            caller_ms = [t.voice_to_voice_ms for t in call.turns if t.voice_to_voice_ms is not None]
            if len(agent_ms) == len(caller_ms):  # only where the turns line up one to one
                pairs += list(zip(caller_ms, agent_ms, strict=True))
        return pairs

    try:
        pairs = asyncio.run(read())
    except AssertionError as exc:  # a record that was not completed: the split is missing, the figures are not
        return {"error": str(exc)[:500]}
    return {
        "turns": len(pairs),
        "agent_p50_ms": percentile([a for _, a in pairs], 50),
        "agent_p95_ms": percentile([a for _, a in pairs], 95),
        "caller_minus_agent_p50_ms": percentile([c - a for c, a in pairs], 50),
        "caller_minus_agent_p95_ms": percentile([c - a for c, a in pairs], 95),
    }


def _v2v_line(batch: Batch) -> str:
    values = [t.voice_to_voice_ms for t in batch.turns()]
    errors = [r.error for r in batch.results if r.error]
    return ", ".join("-" if v is None else f"{v:.0f}" for v in values) + (f" ({errors[0]})" if errors else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def density(
    world: World,
    *,
    levels: Sequence[int],
    turns: int,
    stagger_s: float,
    base_p95_ms: dict[str, float | None],
    deduct_ms: float,
    running: dict[Impl, Agents] | None = None,
) -> dict[str, Any]:
    """Rising levels, each agent's sweep alternating with the other's, a fresh agent process per level (so that
    one level's memory is not the next one's), or the `running` agents (short mode: it only proves the path)."""
    sweeps: dict[str, list[dict[str, Any]]] = {impl: [] for impl in IMPLS}
    going = set(IMPLS)
    for calls in levels:
        for impl in IMPLS:
            if impl not in going:
                continue
            agents = (
                running[impl]
                if running
                else start_agent(
                    impl,
                    world.env,
                    world.doubles,
                    world.pin,
                    world.workdir,
                    **(world.worker_env if impl == "worker" else {}),
                )
            )
            if impl == "stock":
                world.stock_agent_name = agents.stock.agent_name  # type: ignore[union-attr]  # started just above
            try:
                batch = run_batch(world, agents, impl, calls, turns=turns, stagger_s=stagger_s if calls > 1 else 0.0)
            finally:
                if not running:
                    agents.stop()
                forget_requests(world.doubles)
            base = base_p95_ms.get(impl)
            stats = TurnStats.of(impl, batch.results, calls, turns, deduct_ms)
            level = level_dict(batch, stats, None if base is None else base + DENSITY_MARGIN_MS)
            level["agent_ready_s"] = agents.ready_s
            sweeps[impl].append(level)
            log.warning(
                "density %s %d calls: overhead p95 %s ms (limit %s), unanswered %d, agent CPU %s %%, PSS/call %s MB",
                impl,
                calls,
                _fmt(stats.overhead_p95_ms),
                _fmt(level["overhead_p95_limit_ms"]),
                stats.unanswered,
                _fmt(batch.agent_cpu_percent),
                _fmt(level["agent_pss_per_call_mb"], 1),
            )
            if not level["holds"]:
                going.discard(impl)
        if not going:
            break
    return {
        "levels": list(levels),
        "turns_per_call": turns,
        "stagger_s": stagger_s,
        "margin_ms": DENSITY_MARGIN_MS,
        "callers_per_process": CALLERS_PER_PROCESS,
        "sweeps": {
            impl: {"calls_held": calls_held(levels_run), "levels": levels_run} for impl, levels_run in sweeps.items()
        },
    }


# --profile: the worker as it was before each optimisation of docs/performance.md, then as it is (env of each)
PROFILE_VARIANTS: tuple[tuple[str, dict[str, str]], ...] = (
    (
        "livekit's speaking-rate STFT, asyncio's loop",
        {"VOICE_WORKER_STOCK_SPEAKING_RATE": "1", "EVENT_LOOP": "asyncio"},
    ),
    ("batched speaking-rate STFT (pipelines/speaking_rate.py), asyncio's loop", {"EVENT_LOOP": "asyncio"}),
    ("batched speaking-rate STFT, uvloop (worker/event_loop.py; as shipped)", {}),
    (
        "as shipped + each audio stream subscribed to its own events only (livekit 1.2.1's subscription, "
        "benchmarks/rtc_narrowing; not shipped)",
        {"NARROW_AUDIO_STREAMS": "1"},
    ),
)
# --profile's sitecustomize: benchmarks/rtc_narrowing (a no-op unless NARROW_AUDIO_STREAMS=1), chaining gcprobe
PROFILE_SITE = ROOT / "benchmarks" / "rtc_narrowing"


def profile(world: World, *, calls: int, turns: int, stagger_s: float, seconds: float) -> dict[str, Any]:
    """`calls` concurrent calls against a fresh worker of each of `PROFILE_VARIANTS`, alternating, each with its
    CPU profiled (benchmarks/profile_split.py) and its garbage collections timed (benchmarks/gcprobe) once every
    call is under way."""
    pythonpath = os.pathsep.join(p for p in (str(PROFILE_SITE), os.environ.get("PYTHONPATH", "")) if p)
    deduct = endpointing_ms() + critical_providers_ms(endpointing_ms())
    variants: list[dict[str, Any]] = []
    for name, env in PROFILE_VARIANTS:
        agents = start_agent(
            "worker",
            world.env,
            world.doubles,
            world.pin,
            world.workdir,
            PYTHONPATH=pythonpath,
            GC_PROBE_PATH=str(world.workdir / "gc-probe"),
            **env,
        )
        try:
            batch = run_batch(world, agents, "worker", calls, turns=turns, stagger_s=stagger_s, profile_s=seconds)
        finally:
            agents.stop()
            forget_requests(world.doubles)
        stats = TurnStats.of("worker", batch.results, calls, turns, deduct)
        variants.append(
            {
                "variant": name,
                "env": env,
                "stats": asdict(stats),
                "agent_cpu_percent": batch.agent_cpu_percent,
                "agent_cpu_per_call_percent": None
                if batch.agent_cpu_percent is None
                else batch.agent_cpu_percent / calls,
                "profile": batch.profile,
                "loop_blocked": batch.loop_blocked,
            }
        )
        log.warning(
            "profile %s: overhead p95 %s ms, worker CPU %s %%",
            name,
            _fmt(stats.overhead_p95_ms),
            _fmt(batch.agent_cpu_percent),
        )
    return {"calls": calls, "turns_per_call": turns, "variants": variants}


def calls_held(levels_run: Sequence[dict[str, Any]]) -> int:
    held = 0
    for level in levels_run:
        if not level["holds"]:
            break
        held = level["calls"]
    return held


# -- report -------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rounded(value: Any) -> Any:
    """Figures to two decimals: the README embeds the summary, and 17 digits of a millisecond say nothing."""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the README shows, from a report (`render_markdown` renders exactly these)."""
    return _rounded(_summary(report))  # type: ignore[no-any-return]  # _rounded keeps a dict a dict


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    v2v = report["voice_to_voice"]
    dens = report.get("density")
    out: dict[str, Any] = {
        "command": report["command"],
        "started_at": report["started_at"],
        "cores": report["machine"]["logical_cores"],
        "worker_executor": report.get("worker_executor", "thread"),
        "load_average_at_start": round(report["machine"]["load_average_at_start"][0], 2),
        "pinning": report["pinning"]["description"],
        "deduct_ms": report["deduct_ms"],
        "v2v": {
            impl: {
                k: v2v["stats"][impl][k]
                for k in ("turns", "unanswered", "v2v_p50_ms", "v2v_p95_ms", "overhead_p50_ms", "overhead_p95_ms")
            }
            for impl in IMPLS
        },
        "ratio": v2v["ratio_stock_over_worker"],
        "worker_split": v2v.get("worker_split"),
    }
    if dens:
        pinning = report["pinning"]
        worker_cores = len(pinning["worker_cpus"])
        held = dens["sweeps"]["worker"]["calls_held"]
        out["density_goal"] = {
            "per_core": DENSITY_GOAL_PER_CORE,
            "worker_cores": worker_cores,
            "pinned": pinning["enabled"],
            "met": held >= DENSITY_GOAL_PER_CORE * worker_cores,
        }
        out["density"] = {}
        ready = {
            impl: [lv["agent_ready_s"] for lv in dens["sweeps"][impl]["levels"] if lv.get("agent_ready_s")]
            for impl in IMPLS
        }
        if all(ready.values()):
            out["cold_start_s"] = {
                impl: {"p50": percentile(v, 50), "max": max(v), "starts": len(v)} for impl, v in ready.items()
            }
            if report.get("import_floor_s"):
                out["cold_start_s"]["import_floor"] = report["import_floor_s"]
        for impl in IMPLS:
            sweep = dens["sweeps"][impl]
            held = sweep["calls_held"]
            at = next((lv for lv in sweep["levels"] if lv["calls"] == held), None)
            broke = next((lv for lv in sweep["levels"] if not lv["holds"]), None)
            out["density"][impl] = {
                "calls_held": held,
                "overhead_p95_ms": None if at is None else at["overhead_p95_ms"],
                "limit_ms": None if at is None else at["overhead_p95_limit_ms"],
                "cpu_per_call_percent": None if at is None else at["agent_cpu_per_call_percent"],
                "cpu_percent": None if at is None else at["agent_cpu_percent"],
                "pss_per_call_mb": None if at is None else at["agent_pss_per_call_mb"],
                "rss_per_call_mb": None if at is None else at["agent_rss_per_call_mb"],
                "pss_idle_mb": None if at is None else at["agent_pss_idle_mb"],
                "next_level": None
                if broke is None
                else {
                    "calls": broke["calls"],
                    "overhead_p95_ms": broke["overhead_p95_ms"],
                    "unanswered": broke["unanswered"],
                    "agent_cpu_percent": broke["agent_cpu_percent"],
                    "callers_cpu_percent": broke["callers_cpu_percent"],
                    "harness_cores_busy_percent": broke.get("harness_cores_busy_percent"),
                },
            }
    return out


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_markdown(s: dict[str, Any]) -> str:
    """The README table (and the benchmark's printed summary) from `summary()`'s figures."""
    w, st = s["v2v"]["worker"], s["v2v"]["stock"]
    lines = [
        f"| voice-to-voice at the caller ({s['cores']} cores, load average {s['load_average_at_start']} at start) "
        "| turns | end of speech -> first audio p50 / p95 | overhead p50 / p95 |",
        "|---|---|---|---|",
    ]
    for label, x in (("this worker", w), ("stock livekit-agents 1.8.9", st)):
        unanswered = f" ({x['unanswered']} unanswered)" if x["unanswered"] else ""
        lines.append(
            f"| {label} | {x['turns']}{unanswered} | {_fmt(x['v2v_p50_ms'])} / {_fmt(x['v2v_p95_ms'])} ms "
            f"| {_fmt(x['overhead_p50_ms'])} / {_fmt(x['overhead_p95_ms'])} ms |"
        )
    ratio = s["ratio"]
    lines.append(
        f"| stock / worker | | {_r(ratio['v2v_p50'])} / {_r(ratio['v2v_p95'])} "
        f"| {_r(ratio['overhead_p50'])} / {_r(ratio['overhead_p95'])} |"
    )
    split = s.get("worker_split") or {}
    if split.get("turns"):
        lines += [
            "",
            f"Of the worker's end of speech -> first audio at the caller, the worker's own records (livekit's "
            f"`e2e_latency`, {split['turns']} turns) account for {_fmt(split['agent_p50_ms'])} / "
            f"{_fmt(split['agent_p95_ms'])} ms (p50 / p95); the rest, the media path both ways and the VAD's "
            f"estimate of the end of speech, is {_fmt(split['caller_minus_agent_p50_ms'])} / "
            f"{_fmt(split['caller_minus_agent_p95_ms'])} ms.",
        ]
    if "density" in s:
        lines += [
            "",
            f"| density, one worker process ({s['pinning']}) | calls held | overhead p95 there (limit) "
            "| worker CPU per call | PSS / RSS per call | next level |",
            "|---|---|---|---|---|---|",
        ]
        rows = (
            (f"this worker (`JOB_EXECUTOR={s.get('worker_executor', 'thread')}`)", "worker"),
            ("stock livekit-agents (process executor)", "stock"),
        )
        for label, impl in rows:
            d = s["density"][impl]
            nxt = d["next_level"]
            after = (
                "not reached"
                if nxt is None
                else f"{nxt['calls']}: p95 {_fmt(nxt['overhead_p95_ms'])} ms, {nxt['unanswered']} unanswered "
                f"(worker {_fmt(nxt['agent_cpu_percent'])} %, callers {_fmt(nxt['callers_cpu_percent'])} % CPU"
                + (
                    f"; harness core {_fmt(nxt['harness_cores_busy_percent'])} % busy)"
                    if nxt.get("harness_cores_busy_percent") is not None
                    else ")"
                )
            )
            lines.append(
                f"| {label} | **{d['calls_held']}** | {_fmt(d['overhead_p95_ms'])} ms ({_fmt(d['limit_ms'])}) "
                f"| {_fmt(d['cpu_per_call_percent'], 1)} % of a core | {_fmt(d['pss_per_call_mb'], 1)} / "
                f"{_fmt(d['rss_per_call_mb'], 1)} MB | {after} |"
            )
        cold = s.get("cold_start_s")
        if cold:
            w_cold, s_cold = cold["worker"], cold["stock"]
            lines += [
                "",
                f"Cold start, spawn -> registered and taking calls, on its pinned core with no call yet: worker "
                f"p50 {w_cold['p50']:.2f} s (max {w_cold['max']:.2f}, {w_cold['starts']} starts), stock "
                f"{s_cold['p50']:.2f} s (max {s_cold['max']:.2f}, {s_cold['starts']} starts); goal (issue #21) "
                f"<= 1.5 s for the worker: {'met' if w_cold['p50'] <= 1.5 else '**missed**'}.",
            ]
            floor = cold.get("import_floor")
            if floor:
                lines[-1] += (
                    f' Importing livekit-agents and its three plugins alone (`python -c "{IMPORT_FLOOR}"`, same '
                    f"core) takes {floor['p50']:.2f} s p50 ({floor['runs']} runs): the floor under any agent built on "
                    f"them; the worker's start is {w_cold['p50'] - floor['p50']:.2f} s above it, stock's "
                    f"{s_cold['p50'] - floor['p50']:.2f} s."
                )
        goal = s["density_goal"]
        verdict = "met" if goal["met"] else "**missed**"
        lines += [
            "",
            f"Goal (issue #21): >= {goal['per_core']} calls per worker core on the real path: {verdict} "
            f"({s['density']['worker']['calls_held']} calls on {goal['worker_cores']} worker core(s)"
            + ("" if goal["pinned"] else ", not pinned: the worker shared every core with the callers")
            + ").",
        ]
        per_call = s["density"]["worker"]["cpu_per_call_percent"]
        if per_call:
            lines.append(
                f"CPU alone would allow {100 / per_call:.0f} calls on a worker core at {per_call:.1f} % per call; "
                f"{goal['per_core']} calls need <= {100 / goal['per_core']:.1f} % per call."
            )
    return "\n".join(lines)


def render_profile(report: dict[str, Any]) -> str:
    """The --profile run as docs/performance.md shows it."""
    prof = report["profile"]
    lines = [
        f"`{report['command']}`: {prof['calls']} calls of {prof['turns_per_call']} turns against each variant "
        f"({report['pinning']['description']}; load average {report['machine']['load_average_at_start'][0]:.2f} "
        "at start).",
    ]
    for v in prof["variants"]:
        found = v["profile"] or {}
        stats = v["stats"]
        blocked = v["loop_blocked"]
        lines += [
            "",
            f"**{v['variant']}**: {stats['turns']} turns answered ({stats['unanswered']} unanswered), overhead "
            f"p50 / p95 {_fmt(stats['overhead_p50_ms'])} / {_fmt(stats['overhead_p95_ms'])} ms, worker "
            f"{_fmt(v['agent_cpu_percent'])} % of its core over the calls ({_fmt(v['agent_cpu_per_call_percent'], 1)}"
            f" % per call), event loop blocked {blocked.get('count', 0)} times for {blocked.get('total_ms', 0)} ms; "
            f"profiled window {found.get('window_s')} s.",
            "",
            "| worker CPU by runtime (threads) | % of a core |",
            "|---|---|",
        ]
        lines += [f"| {k} | {x} |" for k, x in found.get("cpu_percent_by_runtime", {}).items()]
        lines += ["", "| GIL-holding samples (py-spy) by bucket | share |", "|---|---|"]
        python = found.get("python", {})
        lines += [f"| {k} | {100 * x:.1f} % |" for k, x in python.get("buckets", {}).items()]
        gc_figures = found.get("gc")
        if gc_figures:
            lines += [
                "",
                f"Garbage collector: {gc_figures['cpu_percent']} % of a core (collections by generation "
                f"{gc_figures['collections']}, seconds {gc_figures['seconds_by_generation']}).",
            ]
        lines += ["", "| top leaf frames | share |", "|---|---|"]
        lines += [f"| `{x['frame']}` | {100 * x['share']:.1f} % |" for x in python.get("top_leaves", [])[:8]]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "livekit_server": installed_version(),
        "livekit_agents": metadata.version("livekit-agents"),
        "livekit_rtc": metadata.version("livekit"),
        "python": platform.python_version(),
    }


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    started = time.time()
    box = machine()
    pin = Pinning.plan(not args.no_pin)
    # this process (its main thread, and so the doubles' thread and livekit-server) on the non-worker cores
    os.sched_setaffinity(0, set(pin.other_cpus))
    deduct = endpointing_ms() + critical_providers_ms(endpointing_ms())
    report: dict[str, Any] = {
        "command": command,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "short": args.short,
        "machine": box,
        "pinning": {**asdict(pin), "description": pin.describe()},
        "worker_executor": args.worker_executor,
        "latencies_ms": asdict(LATENCIES),
        "endpointing_ms": endpointing_ms(),
        "critical_providers_ms": critical_providers_ms(endpointing_ms()),
        "deduct_ms": deduct,
        "speech_rms_threshold": SPEECH_RMS,
        "agent": f"sales ({SALES_AGENT})",
    }
    from tests.doubles.wav_fixtures import synthesize_speech, write_wav

    with contextlib.ExitStack() as stack:
        if args.keep:  # logs of every process, for a run that went wrong
            workdir = Path(tempfile.mkdtemp(prefix="real-server-bench-"))
            report["workdir"] = str(workdir)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="real-server-bench-")))
        clip = synthesize_speech(QUESTION, cache_dir=workdir / "speech", sample_rate=48_000)
        speech_path = workdir / "question.wav"
        write_wav(speech_path, clip.pcm, 48_000)
        report["question_s"] = round(clip.duration, 3)
        doubles = start_doubles()
        try:
            with running_livekit_server() as server:
                env = WorkerEnv(
                    livekit=server,
                    catalog=write_catalog(workdir / "catalog", doubles),
                    database_url=f"sqlite:///{workdir / 'records.db'}",
                    webhook_url=doubles.webhook.url,
                    webhook_secret=doubles.webhook.secret,
                )
                world = World(
                    server, doubles, env, pin, workdir, speech_path, worker_env={"JOB_EXECUTOR": args.worker_executor}
                )
                if args.profile:
                    report["profile"] = profile(
                        world,
                        calls=args.profile,
                        turns=args.density_turns,
                        stagger_s=args.stagger,
                        seconds=args.profile_seconds,
                    )
                    return report
                agents: dict[Impl, Agents] = {}
                try:
                    for impl in IMPLS:
                        agents[impl] = start_agent(
                            impl, env, doubles, pin, workdir, **(world.worker_env if impl == "worker" else {})
                        )
                    world.stock_agent_name = agents["stock"].stock.agent_name  # type: ignore[union-attr]  # started just above
                    report["voice_to_voice"] = voice_to_voice(
                        world, agents, rounds=args.rounds, turns=args.turns, deduct_ms=deduct
                    )
                    if not args.short:
                        for running in agents.values():
                            running.stop()
                    stats = report["voice_to_voice"]["stats"]
                    if args.levels:
                        report["density"] = density(
                            world,
                            levels=args.levels,
                            turns=args.density_turns,
                            stagger_s=args.stagger,
                            base_p95_ms={impl: stats[impl]["overhead_p95_ms"] for impl in IMPLS},
                            deduct_ms=deduct,
                            running=agents if args.short else None,
                        )
                finally:
                    for running in agents.values():
                        running.stop()
                report["density_fresh_agent_per_level"] = not args.short
                if report.get("density"):
                    report["import_floor_s"] = import_floor(pin, runs=2 if args.short else 5)
                report["livekit_server_alive"] = server.alive()
        finally:
            doubles.stop()
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["load_average_at_end"] = os.getloadavg()
    report["duration_s"] = round(time.time() - started, 1)
    report["summary"] = summary(report)
    return report


def default_json(short: bool, directory: Path = RESULTS) -> Path:
    return directory / ("real_server-short.json" if short else "real_server.json")


def prerequisites() -> str | None:
    """Why the benchmark cannot run here, or None."""
    network = enter_test_network()
    if not network.entered:
        return f"no test network namespace: {network.problem}"
    if installed_version() != pinned_version():
        return f"livekit-server {pinned_version()} is not installed (found {installed_version()}); run scripts/setup"
    from tests.doubles.wav_fixtures import espeak_available

    if not espeak_available():
        return "espeak-ng is not installed; run scripts/setup --dev"
    return None


# -- the README block -----------------------------------------------------------------------------------------

README = ROOT / "README.md"
BEGIN = "<!-- real-server figures (`python -m benchmarks.real_server --readme`, from "
END = "<!-- end of real-server figures -->"


def readme_block(s: dict[str, Any]) -> str:
    return generated_block.block(BEGIN + "benchmarks/results/real_server.json) -->", END, s, render_markdown(s))


def readme_figures(text: str) -> tuple[dict[str, Any], str] | None:
    """(the figures embedded in the README block, the table the block shows), or None without a block."""
    return generated_block.read(text, BEGIN, END)


def update_readme(source: Path) -> None:
    """Replace the README's real-server block with the figures of `source` (a full run's JSON)."""
    report = json.loads(source.read_text())
    if report.get("short"):
        raise SystemExit(f"{source} is a --short run: its figures do not go in the README")
    generated_block.replace(README, BEGIN, END, readme_block(report["summary"]), what="real-server")


# -- main ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--short", action="store_true", help="a few calls of each (CI)")
    parser.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/)")
    parser.add_argument("--rounds", type=int, help="voice-to-voice: calls of each agent (default 5; short 1)")
    parser.add_argument("--turns", type=int, help="voice-to-voice: turns per call (default 6; short 2)")
    parser.add_argument(
        "--levels", help="density levels, comma-separated, or none (default 1,3,5,7,10,15,20,25,30,40; short 2)"
    )
    parser.add_argument("--density-turns", type=int, help="density: turns per call (default 2; short 1)")
    parser.add_argument("--stagger", type=float, help="density: seconds over which a level's calls start")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the workers to a core of their own")
    parser.add_argument(
        "--worker-executor",
        choices=["thread", "process"],
        default="thread",
        help="the worker's JOB_EXECUTOR (default thread, as deploy/k8s runs it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs (the JSON says where)")
    parser.add_argument(
        "--profile", type=int, metavar="CALLS", help="only profile the worker holding CALLS calls (py-spy, GC)"
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0, help="--profile: the profiled window")
    parser.add_argument(
        "--readme",
        type=Path,
        nargs="?",
        const=None,
        default=argparse.SUPPRESS,
        metavar="JSON",
        help="write the README's real-server block from JSON (default the last full run's) and exit",
    )
    parser.add_argument("--callers", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.callers:  # a caller process (started by run_batch)
        logging.basicConfig(level=logging.ERROR)
        caller_main(args.callers)
        return None
    if "readme" in args:
        update_readme(args.readme or default_json(False))
        return None
    # the namespace first: unshare moves only the calling thread, so no thread may exist yet
    problem = prerequisites()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    # the doubles log every request a client abandoned (a preemptive reply livekit cancels) as an error
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    if problem:
        raise SystemExit(f"benchmarks.real_server cannot run: {problem}")
    args.rounds = args.rounds or (1 if args.short else 5)
    args.turns = args.turns or (2 if args.short else 6)
    args.density_turns = args.density_turns or (1 if args.short else 2)
    args.stagger = STAGGER_S if args.stagger is None else args.stagger
    raw_levels = args.levels or ("2" if args.short else ",".join(map(str, DEFAULT_LEVELS)))
    args.levels = [] if raw_levels == "none" else [int(x) for x in raw_levels.split(",") if x.strip()]
    command = "python -m " + MODULE + " " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    report = run(args, command.strip())
    path = args.json or (RESULTS / "real_server-profile.json" if args.profile else default_json(args.short))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    if args.profile:
        print(render_profile(report))
        print(f"\nResults: {path}")
        return report
    print(render_markdown(report["summary"]))
    print(f"\nResults: {path} ({report['duration_s']} s)")
    return report


if __name__ == "__main__":
    main()
