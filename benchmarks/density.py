"""Density: how many concurrent simulated calls one machine holds, and what each costs in CPU and memory.

Three ways of running calls, each measured at 1, 5, 10, 15, 20, 25, 30, 40 concurrent calls (until a level
does not hold):
- `process`: livekit-agents' own process pool (`ipc.proc_pool.ProcPool`, the `forkserver` start method, the
  forkserver preload list `AgentServer` builds: the registered plugins, livekit's warm-up and `gc.freeze`),
  one job process per call, the job's real `JobContext` (fake job: no room) handed to the simulator;
- `thread`: the same pool with `JobExecutorType.THREAD`: every call in its own thread and event loop of one
  process, each executor running the setup function;
- `inprocess`: every call a task on one event loop (how the stock baseline was measured).
The setup function does what `worker.server.setup_process` does (worker/services.py: the VAD model and the
catalog once per process, every pipeline prebuilt, `gc.freeze()`), with the simulator's settings; the
entrypoint runs `benchmarks.simulator.run_call` with the job's context, which goes through
`calls.bootstrap.start_call` like `worker.server.entrypoint`.

Each level runs in a fresh Python process (`python -m benchmarks.density --level '<json>'`) so that memory
and CPU are not carried over from the previous level. Calls start spread over `stagger_s` and all of them
are active together for most of their length; CPU (all processes of the tree) and PSS are taken over the
window in which every call is active. Per-turn overhead is the simulator's (`TurnRecord.overhead_ms`): end of
speech -> first audio, minus what the VAD must wait for that audio (computed offline, so free of load) and
the providers' configured latencies; it grows with anything the load adds. A level holds when its overhead
p95 is at most 100 ms and every turn was answered; the sweep stops at the first level that does not.

Usage: `python -m benchmarks.density [--executor process thread inprocess] [--variant NAME ...] [--workers N]
[--levels 1,5,10,15,20,25,30,40] [--turns 3]`; `benchmarks.run` calls it for the performance table. `default`
is the worker as shipped; the other variants (`VARIANTS`) change one setting each (`plugin_vad`,
`no_text_transforms`, `preload_app`, ...). `--workers 2` runs two worker processes side by side, as two
`voice-worker start` on one machine would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from benchmarks.simulator import CallRecord, Environment, Tuning, default_script, percentile, run_call
from worker.services import freeze_once, prebuild_pipelines, process_vad

Executor = Literal["process", "thread", "inprocess"]
EXECUTORS: tuple[Executor, ...] = ("process", "thread", "inprocess")
SPEC_ENV = "VOICE_WORKER_DENSITY_SPEC"
# this module's importable name: job processes find `setup` / `entrypoint` by it, even when it runs as __main__
MODULE = "benchmarks.density"
DEFAULT_LEVELS = (1, 5, 10, 15, 20, 25, 30, 40)
OVERHEAD_LIMIT_MS = 100.0
SAMPLE_INTERVAL_S = 0.5
LEVEL_TIMEOUT_S = 240.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")

log = logging.getLogger("voice_worker.bench.density")


@dataclass(frozen=True)
class Variant:
    """Settings under test, on top of what the worker's setup function does (worker/services.py: the process's
    VAD model and catalog shared by its executors, every pipeline prebuilt, `gc.freeze()` after the first
    setup). `preload_app`: the process executor imports the application in the forkserver
    (`AgentServer(preload_modules=[...])`), so job processes share those pages. `text_transforms` / `vad` /
    `stock`: as `benchmarks.simulator.Tuning`."""

    name: str = "default"
    preload_app: bool = False
    text_transforms: Literal["default", "none"] = "default"
    vad: Literal["native", "plugin"] = "native"
    switch_interval_ms: float | None = None
    """`sys.setswitchinterval` for the worker process: how long a thread holding the GIL keeps it while
    others wait (5 ms by default); with one event loop per call (thread executor) every loop waits its turn."""
    malloc_arena_max: int | None = None
    """`MALLOC_ARENA_MAX` for the worker's processes: glibc gives every thread that allocates its own arena,
    and a job process runs a dozen threads (VAD inference, the loop monitor, logging, IPC)."""
    stock: bool = False

    @property
    def tuning(self) -> Tuning:
        return Tuning(stock=self.stock, text_transforms=self.text_transforms, vad=self.vad)


VARIANTS: dict[str, Variant] = {
    # the worker as shipped (the executor is the sweep's, JOB_EXECUTOR)
    "default": Variant(),
    # one setting at a time, to see what each changes
    "plugin_vad": Variant(name="plugin_vad", vad="plugin"),
    "no_text_transforms": Variant(name="no_text_transforms", text_transforms="none"),
    "preload_app": Variant(name="preload_app", preload_app=True),
    "malloc_arenas": Variant(name="malloc_arenas", malloc_arena_max=2),
    "switch_interval_1ms": Variant(name="switch_interval_1ms", switch_interval_ms=1.0),
    "stock": Variant(name="stock", stock=True),
}


@dataclass(frozen=True)
class LevelSpec:
    executor: Executor
    calls: int
    variant: Variant = field(default_factory=Variant)
    turns: int = 3
    stagger_s: float = 5.0
    out_dir: str = ""


@dataclass
class LevelResult:
    executor: str
    variant: str
    calls: int
    completed: int
    failed: int
    turns: int
    unanswered: int
    window_s: float
    cpu_percent: float | None
    """All processes of the tree, over the window in which every call was active (100 = one core)."""
    pss_before_mb: float
    """The launching process alone, before any job process or call."""
    pss_warm_mb: float
    """The whole tree with every job process / executor set up, before the calls start."""
    pss_peak_mb: float
    processes_at_peak: int
    totals_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    """Per answered turn: first audio - end of speech - (the VAD's own wait for that audio + provider time)."""
    call_start_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def cpu_per_call_percent(self) -> float | None:
        return None if self.cpu_percent is None else self.cpu_percent / self.calls

    @property
    def memory_per_call_mb(self) -> float:
        return (self.pss_peak_mb - self.pss_before_mb) / self.calls


# -- measuring the process tree ------------------------------------------------------------------------


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # utime and stime are fields 14 and 15 of /proc/<pid>/stat (1-based, counting pid and comm)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class Sample:
    at: float
    cpu: dict[int, float]
    pss_kb: int
    processes: int


class TreeSampler:
    """CPU time and PSS of this process and all its descendants, every `interval` seconds."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self._root = psutil.Process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> Sample:
        pids = [self._root.pid]
        with contextlib.suppress(psutil.Error):
            pids += [c.pid for c in self._root.children(recursive=True)]
        cpu = {pid: c for pid in pids if (c := _cpu_s(pid)) is not None}
        return Sample(at=time.time(), cpu=cpu, pss_kb=sum(_pss_kb(pid) for pid in cpu), processes=len(cpu))

    def start(self) -> None:
        # a thread, not a task: a saturated event loop must not skew the sampling it is being judged by
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.samples.append(self.sample())

        self._thread = threading.Thread(target=loop, name="density-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


def cpu_percent(samples: Sequence[Sample]) -> float | None:
    """CPU of the processes alive at both ends of the samples, as a percentage of one core."""
    if len(samples) < 2:
        return None
    first, last = samples[0], samples[-1]
    common = first.cpu.keys() & last.cpu.keys()
    used = sum(last.cpu[p] - first.cpu[p] for p in common)
    return 100 * used / (last.at - first.at)


# -- the job side (runs in the job process / executor thread) ------------------------------------------


def _spec() -> LevelSpec:
    raw = json.loads(os.environ[SPEC_ENV])
    return LevelSpec(**{**raw, "variant": Variant(**raw["variant"])})


_process_env: Environment | None = None
_process_lock = threading.Lock()


def setup(proc: Any) -> None:
    """The job executor's setup function (livekit's `setup_fnc`), doing what `worker.server.setup_process`
    does: one environment per process (the process's VAD model and catalog, `worker.services.process_vad` /
    `process_catalog`), every catalog pipeline prebuilt, `gc.freeze()` after the first setup; plus the
    simulator's own preparation (the caller's speech, the VAD's waits)."""
    global _process_env
    spec = _spec()
    if spec.variant.switch_interval_ms is not None:
        sys.setswitchinterval(spec.variant.switch_interval_ms / 1000)
    with _process_lock:
        if _process_env is None:
            env = Environment.create(vad=process_vad())
            env.prepare(default_script(spec.turns), spec.variant.tuning)
            prebuild_pipelines(env.catalog, env.settings, env.vad)
            _process_env = env
        env = _process_env
    freeze_once()
    proc.userdata["env"] = env


async def entrypoint(ctx: Any) -> None:
    """The job's entrypoint: one simulated call through `start_call` with the job's own context."""
    spec = _spec()
    env: Environment = ctx.proc.userdata["env"]
    record = await run_call(env, default_script(spec.turns), tuning=spec.variant.tuning, ctx=ctx)
    Path(spec.out_dir, f"{ctx.job.id}.json").write_text(json.dumps(record.as_dict()))
    ctx.shutdown(reason="simulated call finished")


# -- one level (runs in its own Python process) --------------------------------------------------------


def forkserver_context(preload_app: bool) -> Any:
    """The multiprocessing context `AgentServer` builds: plugins, livekit's warm-up, then `gc.freeze`."""
    from livekit.agents.plugin import Plugin

    import worker.server  # noqa: F401 - what the worker's main process has imported (registers the plugins)

    preload = [p.package for p in Plugin.registered_plugins]
    if preload_app:
        preload.append(MODULE)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        [*dict.fromkeys(preload), "livekit.agents.ipc._preload", "livekit.agents.ipc._preload_freeze"]
    )
    return ctx


def _job_info(index: int, metadata: str) -> Any:
    from livekit.agents.job import JobAcceptArguments, RunningJobInfo
    from livekit.protocol import agent as agent_proto
    from livekit.protocol import models

    job = agent_proto.Job(
        id=f"density-{index}-{uuid.uuid4().hex[:8]}",
        room=models.Room(name=f"density-room-{index}", sid=f"RM_density{index}"),
        type=agent_proto.JobType.JT_ROOM,
        metadata=metadata,
    )
    return RunningJobInfo(
        accept_arguments=JobAcceptArguments(name="", identity=f"agent-{index}", metadata=""),
        job=job,
        url="",
        token="",
        worker_id="density",
        fake_job=True,
    )


async def _run_pool(spec: LevelSpec, sampler: TreeSampler) -> tuple[float, float]:
    from livekit.agents.ipc.proc_pool import ProcPool
    from livekit.agents.job import JobExecutorType

    executor_type = JobExecutorType.PROCESS if spec.executor == "process" else JobExecutorType.THREAD
    pool = ProcPool(
        initialize_process_fnc=setup,
        job_entrypoint_fnc=entrypoint,
        session_end_fnc=None,
        simulation_end_fnc=None,
        # every call gets a warmed process: the pool starts them all before the first call
        num_idle_processes=spec.calls,
        initialize_timeout=120.0,
        close_timeout=30.0,
        session_end_timeout=10.0,
        inference_executor=None,
        job_executor_type=executor_type,
        mp_ctx=forkserver_context(spec.variant.preload_app),
        memory_warn_mb=2000,
        memory_limit_mb=0,
        http_proxy=None,
        loop=asyncio.get_running_loop(),
    )
    ready: list[Any] = []
    pool.on("process_ready", ready.append)
    before = sampler.sample().pss_kb / 1024
    await pool.start()
    await _until(lambda: len(ready) >= spec.calls, 120.0, "job processes to warm up")
    warm = sampler.sample().pss_kb / 1024
    sampler.start()
    metadata_env = Environment.create()
    script = default_script(spec.turns)
    try:
        for i in range(spec.calls):
            await pool.launch_job(_job_info(i, metadata_env.metadata(script)))
            await asyncio.sleep(spec.stagger_s / spec.calls)
        await _until(
            lambda: len(list(Path(spec.out_dir).glob("*.json"))) >= spec.calls, LEVEL_TIMEOUT_S, "calls to finish"
        )
    finally:
        sampler.stop()
        await pool.aclose()
    return before, warm


def _run_inprocess(spec: LevelSpec, sampler: TreeSampler) -> tuple[float, float]:
    before = sampler.sample().pss_kb / 1024
    env = Environment.create(vad=process_vad())
    env.prepare(default_script(spec.turns), spec.variant.tuning)
    prebuild_pipelines(env.catalog, env.settings, env.vad)
    freeze_once()
    warm = sampler.sample().pss_kb / 1024
    sampler.start()
    try:
        records = asyncio.run(_inprocess_calls(spec, env))
    finally:
        sampler.stop()
    for i, record in enumerate(records):
        Path(spec.out_dir, f"inprocess-{i}.json").write_text(json.dumps(record.as_dict()))
    return before, warm


async def _inprocess_calls(spec: LevelSpec, env: Environment) -> list[CallRecord]:
    script = default_script(spec.turns)

    async def one(i: int) -> CallRecord:
        await asyncio.sleep(i * spec.stagger_s / spec.calls)
        return await run_call(env, script, tuning=spec.variant.tuning)

    return list(await asyncio.gather(*(one(i) for i in range(spec.calls))))


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"density level: timed out waiting for {what}")
        await asyncio.sleep(0.1)


def run_level(spec: LevelSpec) -> LevelResult:
    """One level, in this process (normally a fresh one; see `measure_level`)."""
    out = Path(spec.out_dir or tempfile.mkdtemp(prefix="density-"))
    out.mkdir(parents=True, exist_ok=True)
    spec = LevelSpec(**{**asdict(spec), "variant": spec.variant, "out_dir": str(out)})
    os.environ[SPEC_ENV] = json.dumps(asdict(spec))
    sampler = TreeSampler()
    if spec.executor == "inprocess":
        before, warm = _run_inprocess(spec, sampler)
    else:
        before, warm = asyncio.run(_run_pool(spec, sampler))
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    return summarize_level(spec, records, sampler, before, warm)


def summarize_level(
    spec: LevelSpec, records: list[dict[str, Any]], sampler: TreeSampler, before_mb: float, warm_mb: float
) -> LevelResult:
    ok = [r for r in records if r["error"] is None]
    starts = [r["greeting_first_frame_at"] or r["entered_at"] for r in records]
    ends = [r["ended_at"] for r in records if r["ended_at"]]
    # every call active: from the last greeting to the first call's end
    window = sampler.window(max(starts), min(ends)) if starts and ends else []
    if len(window) < 2:  # the calls barely overlapped: take their whole span
        window = sampler.window(min(starts), max(ends)) if starts and ends else []
    peak = max(window, key=lambda s: s.pss_kb, default=None) or (sampler.samples[-1] if sampler.samples else None)
    turns = [t for r in records for t in r["turns"]]
    answered = [t for t in turns if t["total_ms"] is not None]
    return LevelResult(
        executor=spec.executor,
        variant=spec.variant.name,
        calls=spec.calls,
        completed=len(ok),
        failed=len(records) - len(ok) + max(spec.calls - len(records), 0),
        turns=len(turns),
        unanswered=len(turns) - len(answered) + (spec.calls - len(records)) * spec.turns,
        window_s=(window[-1].at - window[0].at) if len(window) >= 2 else 0.0,
        cpu_percent=cpu_percent(window),
        pss_before_mb=before_mb,
        pss_warm_mb=warm_mb,
        pss_peak_mb=(peak.pss_kb / 1024) if peak else 0.0,
        processes_at_peak=peak.processes if peak else 0,
        totals_ms=[t["total_ms"] for t in answered],
        overhead_ms=[t["overhead_ms"] for t in answered if t["overhead_ms"] is not None],
        call_start_ms=[r["call_start_ms"] for r in records if r["call_start_ms"] is not None],
        errors=[r["error"] for r in records if r["error"]][:5],
    )


def measure_level(spec: LevelSpec, *, timeout: float = LEVEL_TIMEOUT_S + 180) -> LevelResult:
    """Run one level in a fresh Python process and read its result."""
    with tempfile.TemporaryDirectory(prefix="density-") as tmp:
        result_path = Path(tmp, "result.json")
        payload = json.dumps({**asdict(spec), "out_dir": str(Path(tmp, "calls"))})
        env = dict(os.environ)
        if spec.variant.malloc_arena_max is not None:
            env["MALLOC_ARENA_MAX"] = str(spec.variant.malloc_arena_max)
        subprocess.run(
            [sys.executable, "-m", "benchmarks.density", "--level", payload, "--result", str(result_path)],
            check=True,
            timeout=timeout,
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
        )
        raw = json.loads(result_path.read_text())
    return LevelResult(**raw)


# -- the sweep -----------------------------------------------------------------------------------------


@dataclass
class Sweep:
    executor: str
    variant: str
    workers: int
    levels: list[LevelResult]

    @staticmethod
    def holds(level: LevelResult) -> bool:
        p95 = percentile(level.overhead_ms, 95)
        return level.unanswered == 0 and level.failed == 0 and p95 is not None and p95 <= OVERHEAD_LIMIT_MS

    @property
    def calls_held(self) -> int:
        held = 0
        for level in self.levels:
            if not self.holds(level):
                break
            held = level.calls
        return held

    @property
    def marginal_memory_mb(self) -> float | None:
        """Least-squares slope of the peak PSS of the whole tree over concurrent calls: what one more call
        costs, with the fixed costs (workers, forkserver, models) left out. Only levels where every worker
        process has calls count: below that, a level adds a whole worker, not a call."""
        points = [(lv.calls, lv.pss_peak_mb) for lv in self.levels if lv.pss_peak_mb and lv.calls >= self.workers]
        if len(points) < 2:
            return None
        mx = sum(x for x, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        den = sum((x - mx) ** 2 for x, _ in points)
        return sum((x - mx) * (y - my) for x, y in points) / den if den else None

    @property
    def label(self) -> str:
        return self.executor if self.workers == 1 else f"{self.executor} x{self.workers} workers"

    def as_dict(self) -> dict[str, Any]:
        return {
            "executor": self.executor,
            "variant": self.variant,
            "workers": self.workers,
            "calls_held": self.calls_held,
            "marginal_memory_mb": self.marginal_memory_mb,
            "levels": [
                {
                    **asdict(lv),
                    "cpu_per_call_percent": lv.cpu_per_call_percent,
                    "memory_per_call_mb": lv.memory_per_call_mb,
                    "overhead_p50_ms": percentile(lv.overhead_ms, 50),
                    "overhead_p95_ms": percentile(lv.overhead_ms, 95),
                    "holds": self.holds(lv),
                }
                for lv in self.levels
            ],
        }


def merge(results: Sequence[LevelResult]) -> LevelResult:
    """Several worker processes measured side by side, as one machine."""
    first = results[0]
    cpus = [r.cpu_percent for r in results]
    return LevelResult(
        executor=first.executor,
        variant=first.variant,
        calls=sum(r.calls for r in results),
        completed=sum(r.completed for r in results),
        failed=sum(r.failed for r in results),
        turns=sum(r.turns for r in results),
        unanswered=sum(r.unanswered for r in results),
        window_s=min(r.window_s for r in results),
        cpu_percent=None if any(c is None for c in cpus) else sum(cpus),  # type: ignore[misc]  # no None past the check
        pss_before_mb=sum(r.pss_before_mb for r in results),
        pss_warm_mb=sum(r.pss_warm_mb for r in results),
        pss_peak_mb=sum(r.pss_peak_mb for r in results),
        processes_at_peak=sum(r.processes_at_peak for r in results),
        totals_ms=[v for r in results for v in r.totals_ms],
        overhead_ms=[v for r in results for v in r.overhead_ms],
        call_start_ms=[v for r in results for v in r.call_start_ms],
        errors=[e for r in results for e in r.errors][:5],
    )


def measure(spec: LevelSpec, workers: int = 1) -> LevelResult:
    """`spec.calls` calls spread over `workers` worker processes running side by side (LiveKit balances
    jobs across the workers registered on a machine the same way)."""
    if workers == 1:
        return measure_level(spec)
    shares = [spec.calls // workers + (1 if i < spec.calls % workers else 0) for i in range(workers)]
    specs = [LevelSpec(**{**asdict(spec), "variant": spec.variant, "calls": n}) for n in shares if n]
    with ThreadPoolExecutor(len(specs)) as pool:
        return merge(list(pool.map(measure_level, specs)))


def sweep(
    executor: Executor,
    variant: Variant,
    levels: Sequence[int] = DEFAULT_LEVELS,
    *,
    workers: int = 1,
    turns: int = 3,
    stagger_s: float = 5.0,
) -> Sweep:
    """Levels in order until one does not hold (overhead p95 over 100 ms, or a turn unanswered)."""
    result = Sweep(executor=executor, variant=variant.name, workers=workers, levels=[])
    for calls in levels:
        spec = LevelSpec(executor=executor, calls=calls, variant=variant, turns=turns, stagger_s=stagger_s)
        level = measure(spec, workers)
        result.levels.append(level)
        log.info(
            "density %s/%s %d calls: overhead p95 %s ms, CPU %s %%, peak PSS %.0f MB",
            result.label,
            variant.name,
            calls,
            _fmt(percentile(level.overhead_ms, 95)),
            _fmt(level.cpu_percent),
            level.pss_peak_mb,
        )
        if not result.holds(level):
            break
    return result


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(sweeps: Sequence[Sweep]) -> str:
    lines = [
        "| executor | variant | calls | overhead p50 / p95 | unanswered | CPU (100 % = 1 core) | CPU per call "
        "| peak PSS (whole tree) | call start p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sw in sweeps:
        for lv in sw.levels:
            lines.append(
                f"| {sw.label} | {sw.variant} | {lv.calls} | {_fmt(percentile(lv.overhead_ms, 50))} / "
                f"{_fmt(percentile(lv.overhead_ms, 95))} ms | {lv.unanswered}/{lv.turns} | {_fmt(lv.cpu_percent)} % "
                f"| {_fmt(lv.cpu_per_call_percent, 1)} % | {lv.pss_peak_mb:.0f} MB "
                f"| {_fmt(percentile(lv.call_start_ms, 50))} ms |"
            )
    lines += [
        "",
        "| executor | variant | calls held (overhead p95 <= 100 ms, none unanswered) | marginal PSS per call |",
        "|---|---|---|---|",
    ]
    for sw in sweeps:
        lines.append(f"| {sw.label} | {sw.variant} | {sw.calls_held} | {_fmt(sw.marginal_memory_mb, 1)} MB |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", nargs="*", choices=EXECUTORS, default=list(EXECUTORS))
    parser.add_argument("--variant", nargs="*", choices=list(VARIANTS), default=["default"])
    parser.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)))
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="worker processes side by side (default 1)")
    parser.add_argument("--level", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.level:  # one level, in this (fresh) process
        import importlib

        module = importlib.import_module(MODULE)  # not __main__: job processes unpickle by module name
        raw = json.loads(args.level)
        spec = module.LevelSpec(**{**raw, "variant": module.Variant(**raw["variant"])})
        result = module.run_level(spec)
        Path(args.result).write_text(json.dumps(asdict(result)))
        return

    levels = [int(x) for x in args.levels.split(",") if x]
    sweeps = [
        sweep(executor, VARIANTS[name], levels, workers=args.workers, turns=args.turns)
        for executor in args.executor
        for name in args.variant
    ]
    print(markdown(sweeps))


if __name__ == "__main__":
    main()
