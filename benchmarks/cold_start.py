"""Cold start of the installed package: `voice-worker start` spawned → registered with LiveKit.

Each run starts a fresh LiveKit protocol double (tests/doubles/livekit_server.py, on 127.0.0.1), spawns
`<venv>/bin/voice-worker start` as a subprocess in production mode (JSON logs, strict secrets, idle job
processes warming up as in the fleet), and times from just before the spawn to the moment the double
records the worker's `register` message. The worker is then sent SIGTERM and must exit 0. Every run uses one
database, migrated before the first: a fleet's database is current when a worker starts, except on the first
start after a release that adds a migration.

What this is not: a container's start. Image pull, container creation and the page cache of a fresh node
are not in it (no container engine runs where this was written). The first run after a while reads the
venv from disk; later runs mostly from the page cache, so the first run is reported on its own too.

Every round also times the floor under any agent built on livekit-agents: a fresh interpreter importing
livekit-agents and the three plugins the example pipelines use (`IMPORT_FLOOR`), and exiting.

`--baseline REV` starts REV's code too (`git archive`, same virtualenv, on PYTHONPATH), alternating with the
working tree's round by round, so both meet the same machine load: before and after a change in one run.

Usage: `python -m benchmarks.cold_start [--runs N] [--venv PATH] [--baseline REV]` (default: the running
interpreter's venv). Prints a summary and writes benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.baseline import checkout
from records.migrate import upgrade
from tests.doubles.livekit_server import LiveKitServerDouble

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cold_start.json"
API_KEY = "cold-start-bench"
API_SECRET = "cold-start-bench-livekit-secret-0123456789abcdef"
SIGNING_SECRET = "cold-start-bench-dispatch-signing-secret-0123456789"
REGISTER_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 30.0
IMPORT_FLOOR = "import livekit.agents, livekit.plugins.openai, livekit.plugins.deepgram, livekit.plugins.silero"


@dataclass(frozen=True)
class Run:
    registered_s: float
    exit_code: int
    exited_s: float
    # CPU time of the worker and its job processes from spawn to exit: unlike wall time, it barely moves when
    # other work shares the machine.
    cpu_s: float


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _environment(livekit_url: str, database_url: str, executor: str, code: Path | None = None) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {
        **keep,
        # another revision's code ahead of the installed (editable) project
        **({"PYTHONPATH": str(code)} if code is not None else {}),
        "VOICE_WORKER_MODE": "production",
        "JOB_EXECUTOR": executor,
        "LIVEKIT_URL": livekit_url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "DISPATCH_SIGNING_SECRET": SIGNING_SECRET,
        "DATABASE_URL": database_url,
        "HEALTH_HOST": "127.0.0.1",
        "HEALTH_PORT": "0",
        # The example catalog's providers; placeholders are enough, no request is made.
        "OPENAI_API_KEY": "sk-cold-start-not-real",
        "DEEPGRAM_API_KEY": "dg-cold-start-not-real",
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


async def one_run(executable: Path, executor: str, database_url: str, code: Path | None = None) -> Run:
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        workdir = Path(tmp)
        log_path = workdir / "worker.log"
        async with LiveKitServerDouble(api_key=API_KEY, api_secret=API_SECRET) as lk:
            with log_path.open("wb") as log:
                cpu_before = _children_cpu_s()
                started = time.perf_counter()
                process = await asyncio.create_subprocess_exec(
                    str(executable),
                    "start",
                    cwd=workdir,
                    env=_environment(lk.url, database_url, executor, code),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                )
                try:
                    await lk.wait_registered(timeout=REGISTER_TIMEOUT_S)
                    registered = time.perf_counter() - started
                    process.send_signal(signal.SIGTERM)
                    stopping = time.perf_counter()
                    code = await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
                    exited = time.perf_counter() - stopping
                except BaseException:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                    tail = log_path.read_text(errors="replace")[-3000:]
                    print(f"worker output (tail):\n{tail}", file=sys.stderr)
                    raise
        return Run(registered_s=registered, exit_code=code, exited_s=exited, cpu_s=_children_cpu_s() - cpu_before)


def _venv_executable(venv: Path) -> Path:
    executable = venv / "bin" / "voice-worker"
    if not executable.exists():
        raise SystemExit(f"{executable} does not exist; install the project into {venv} first")
    return executable


def import_floor_s(venv: Path) -> float:
    """Seconds for a fresh interpreter of `venv` to run `IMPORT_FLOOR` and exit."""
    started = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-c", IMPORT_FLOOR], check=True, env={"PYTHONDONTWRITEBYTECODE": "1"})
    return time.perf_counter() - started


def _stats(results: list[Run]) -> dict[str, object]:
    registered = [r.registered_s for r in results]
    return {
        "runs": [asdict(r) for r in results],
        "first_s": round(registered[0], 3),
        "p50_s": round(statistics.median(registered), 3),
        "min_s": round(min(registered), 3),
        "max_s": round(max(registered), 3),
        "cpu_p50_s": round(statistics.median(r.cpu_s for r in results), 3),
        "all_exited_0": all(r.exit_code == 0 for r in results),
    }


async def main_async(runs: int, venv: Path, executor: str, baseline: str | None = None) -> dict[str, object]:
    executable = _venv_executable(venv)
    code = checkout(baseline) if baseline else None
    # One database for every run, brought to the schema first, as a fleet's is: a worker that finds it current
    # reads one row where the first start of a new schema runs the migrations
    database_url = f"sqlite:///{tempfile.mkdtemp(prefix='cold-start-db-')}/voice-worker.db"
    upgrade(database_url)
    load_before = os.getloadavg()
    results: list[Run] = []
    before: list[Run] = []
    floor: list[float] = []
    for _ in range(runs):
        if code is not None:
            before.append(await one_run(executable, executor, database_url, code))
        results.append(await one_run(executable, executor, database_url))
        floor.append(import_floor_s(venv))
    return {
        "what": "voice-worker start spawned -> register received by the LiveKit protocol double",
        "venv": str(venv),
        "job_executor": executor,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **_stats(results),
        "import_floor": {"command": f'python -c "{IMPORT_FLOOR}"', "p50_s": round(statistics.median(floor), 3)},
        "baseline": None if code is None else {"rev": baseline, **_stats(before)},
        # 1-minute load average before and after: other work on the machine stretches the wall times
        "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix))
    parser.add_argument("--executor", choices=["process", "thread"], default="process", help="JOB_EXECUTOR")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    parser.add_argument("--baseline", metavar="REV", help="also start this git revision's code, alternating")
    args = parser.parse_args()
    summary = asyncio.run(main_async(args.runs, args.venv.resolve(), args.executor, args.baseline))
    head = f"cold start ({args.runs} runs, JOB_EXECUTOR={args.executor}, {summary['cpus']} CPUs, {summary['venv']})"
    rows = [("working tree", summary)]
    if summary["baseline"] is not None:
        rows.insert(0, (f"at {args.baseline}", summary["baseline"]))
    for label, r in rows:
        print(
            f"{head}, {label}: p50 {r['p50_s']} s, first {r['first_s']} s, min {r['min_s']} s, max {r['max_s']} s; "
            f"CPU p50 {r['cpu_p50_s']} s; SIGTERM -> exit 0 every run: {r['all_exited_0']}"
        )
    floor = summary["import_floor"]
    print(f"import floor ({floor['command']}): p50 {floor['p50_s']} s; load {summary['loadavg_1m']}")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
