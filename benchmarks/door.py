"""The web-call door under load: `python -m benchmarks.door [--requests 500] [--rate 200] [--json PATH]`.

Each target is a real process on this machine, started here, and loaded by a small asyncio HTTP/1.1 client
(keep-alive connections, one request at a time on each). Not httpx: on these 2 shared cores httpx spent three
times the CPU of the server it measured (2.7 s against 0.9 s for 500 requests), so it measured itself.
- `ceiling`: a bare FastAPI endpoint on the same uvicorn settings that only mints a token (the door's minting
  core, `contract.tokens.mint_call`) — what this machine can do at all;
- `door-sqlite`: `voice-worker door` in production mode (JSON logs, 20 hashed API keys, rate limits, session row
  written to SQLite per call);
- `door-postgresql`: the same with DATABASE_URL on PostgreSQL (`--postgres-url`, else a throwaway cluster as
  the tests start one) and `DOOR_SHARED_STATE=database`, as a fleet of replicas runs it.

Two loads per target, Feather requests spread over 20 API keys:
1. closed loop: `--requests` requests, 50 in flight at any time -> requests per second, p50, p99;
2. open loop: `--rate` requests per second for `--seconds`, each latency measured from its scheduled start (a
   slow answer cannot hide the queue behind it) -> p50, p99. Goal: p99 <= 100 ms at 200 requests per second.
Each load also reports the CPU time the server (and PostgreSQL, when the benchmark started it) spent per request:
unlike latency, it barely moves when other work shares the machine.

`--baseline REV` runs each door target first from git revision REV's code (`git archive`, same virtualenv), then
from the working tree: before and after a change, in the same run and under the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from benchmarks import generated_block
from benchmarks.baseline import checkout
from door.keys import hash_api_key

CONCURRENCY = 50
KEYS = 20
SUPPORT_AGENT = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01"
FEATHER = "/v1/voice/web-call"
GOAL_P99_MS = 100.0
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LoadResult:
    target: str
    load: str
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_request: float | None = None
    postgres_cpu_ms_per_request: float | None = None


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _keys() -> list[str]:
    return [f"vwd_bench-key-{i:02d}-0123456789abcdef0123456789abcdef" for i in range(KEYS)]


class Connection:
    """One keep-alive HTTP/1.1 connection: enough of the protocol for the door's JSON answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nhost: door\r\ncontent-type: application/json\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


_BODY = json.dumps({"agent_id": SUPPORT_AGENT}).encode()


async def closed_loop(url: str, total: int, target: str) -> LoadResult:
    keys = _keys()
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker() -> None:
        nonlocal errors
        connection = await Connection.open(url)
        try:
            for i in counter:
                started = time.perf_counter()
                status = await connection.post(FEATHER, _BODY, {"x-api-key": keys[i % KEYS]})
                latencies.append(time.perf_counter() - started)
                errors += status != 200
        finally:
            connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    seconds = time.perf_counter() - began
    return LoadResult(
        target,
        f"closed loop, {CONCURRENCY} in flight",
        total,
        errors,
        round(seconds, 2),
        round(total / seconds, 1),
        round(_percentile(latencies, 0.5) * 1000, 1),
        round(_percentile(latencies, 0.99) * 1000, 1),
    )


async def open_loop(url: str, rate: float, seconds: float, target: str) -> LoadResult:
    keys = _keys()
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    idle: list[Connection] = [await Connection.open(url) for _ in range(CONCURRENCY)]

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        # A free connection if there is one, else a new one (a browser's request does not wait for another's).
        connection = idle.pop() if idle else await Connection.open(url)
        status = await connection.post(FEATHER, _BODY, {"x-api-key": keys[i % KEYS]})
        latencies.append(time.perf_counter() - scheduled)
        errors += status != 200
        idle.append(connection)

    began = time.perf_counter() + 0.2
    await asyncio.gather(*(one(i, began + i / rate) for i in range(total)))
    elapsed = time.perf_counter() - began
    for connection in idle:
        connection.close()
    return LoadResult(
        target,
        f"open loop, {rate:g} req/s",
        total,
        errors,
        round(elapsed, 2),
        round(total / elapsed, 1),
        round(_percentile(latencies, 0.5) * 1000, 1),
        round(_percentile(latencies, 0.99) * 1000, 1),
    )


# --- targets --------------------------------------------------------------------------------------------------


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children so far (PostgreSQL: the postmaster and its backends)."""
    root = psutil.Process(pid)
    # Children that ended (a backend whose connection closed) count in their parent's children_* times.
    reaped = root.cpu_times()
    total = reaped.children_user + reaped.children_system
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@contextmanager
def _process(
    argv: list[str], env: dict[str, str], cwd: Path, port: int, name: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    log = cwd / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)


def _door_env(work: Path, port: int, database_url: str, shared: str) -> dict[str, str]:
    from tests.doubles.door_process import door_env

    keys_file = work / "door-keys.yaml"
    entries = [
        {"name": f"bench-{i:02d}", "sha256": hash_api_key(key), "scopes": {"agents": ["*"], "teams": ["*"]}}
        for i, key in enumerate(_keys())
    ]
    keys_file.write_text(yaml.safe_dump(entries), encoding="utf-8")
    return door_env(
        work,
        DOOR_PORT=port,
        DATABASE_URL=database_url,
        DOOR_SHARED_STATE=shared,
        DOOR_API_KEYS_FILE=keys_file,
        DOOR_RATE_LIMIT_PER_MINUTE=100_000,
    )


def serve_ceiling(port: int) -> None:
    """The ceiling: FastAPI + uvicorn (the door's server settings), one route that mints a token and nothing else."""
    import uvicorn
    from fastapi import FastAPI

    from contract.tokens import mint_call
    from tests.doubles.door_world import make_settings

    settings = make_settings(Path(tempfile.mkdtemp(prefix="door-ceiling-")))
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(FEATHER)
    async def mint(body: dict[str, Any]) -> dict[str, str]:
        import uuid

        return mint_call(settings, session_type="test", agent_id=uuid.UUID(body["agent_id"])).as_web_call_response()

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", server_header=False)


def _run_target(
    url: str, target: str, args: argparse.Namespace, server_pid: int, postgres_pid: int | None
) -> list[LoadResult]:
    asyncio.run(closed_loop(url, 50, target))  # warm-up: imports, connections, the first session rows
    results = []
    for load in (
        lambda: closed_loop(url, args.requests, target),
        lambda: open_loop(url, args.rate, args.seconds, target),
    ):
        server_before = _cpu_seconds(server_pid)
        postgres_before = _cpu_seconds(postgres_pid) if postgres_pid else 0.0
        result = asyncio.run(load())
        result.server_cpu_ms_per_request = round((_cpu_seconds(server_pid) - server_before) * 1000 / result.requests, 2)
        if postgres_pid:
            postgres_ms = (_cpu_seconds(postgres_pid) - postgres_before) * 1000 / result.requests
            result.postgres_cpu_ms_per_request = round(postgres_ms, 2)
        postgres_cpu = f", PostgreSQL {result.postgres_cpu_ms_per_request} ms" if postgres_pid else ""
        print(
            f"  {result.load:28} {result.requests_per_s:7.1f} req/s  p50 {result.p50_ms:6.1f} ms  "
            f"p99 {result.p99_ms:7.1f} ms  errors {result.errors}  "
            f"CPU per request: server {result.server_cpu_ms_per_request} ms{postgres_cpu}",
            flush=True,
        )
        results.append(result)
    return results


class _Postgres:
    """An empty database per door target: on `--postgres-url`'s server, else on one throwaway cluster.

    The cluster is the tests' (fsync and synchronous_commit off: nothing waits for the disk) unless `durable`, which
    restarts it with PostgreSQL's defaults, as production runs it: every durable commit waits for its WAL flush.
    """

    def __init__(self, url: str | None, *, durable: bool) -> None:
        self._url = url
        self._durable = durable
        self._cluster: Any = None
        self._server: Any = None
        self.pid: int | None = None  # the postmaster, when the benchmark started it (its CPU time is measured)

    def database(self) -> str:
        if self._url:
            return self._url
        from tests.doubles.postgres import PostgresServer, _Cluster, _find_bin_dir

        if self._server is None:
            bin_dir = _find_bin_dir()
            if bin_dir is None:
                raise RuntimeError("no PostgreSQL: pass --postgres-url or install the server binaries")
            self._cluster = _Cluster(bin_dir)
            self._server = PostgresServer(admin_dsn=self._cluster.start())
            if self._durable:
                self._restart_with_defaults()
            self.pid = int((self._cluster.data / "postmaster.pid").read_text().split()[0])
        return str(self._server.create_database())

    def _restart_with_defaults(self) -> None:
        cluster = self._cluster
        # pg_ctl's -o replaces the options the cluster was started with: where it listens, and nothing else.
        options = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {cluster.base} -c max_connections=100"
        proc = cluster._run(
            "pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log), "-w", "-t", "60", "-o", options, "restart"
        )
        if proc.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not restart: {proc.stderr[-2000:]}")

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()


def _door_argv(code: Path | None, voice_worker: Path) -> list[str]:
    """`voice-worker door`, from the working tree or from another checkout's code (its own entry point)."""
    if code is None:
        return [str(voice_worker), "door"]
    entry = tomllib.loads((code / "pyproject.toml").read_text())["project"]["scripts"]["voice-worker"]
    module, function = entry.split(":")
    program = f"import sys; sys.path.insert(0, {str(code)!r}); from {module} import {function}; sys.exit({function}())"
    return [sys.executable, "-c", program, "door"]


# -- the README block -----------------------------------------------------------------------------------------

README = ROOT / "README.md"
BEGIN = "<!-- door figures (`python -m benchmarks.door --readme`, from benchmarks/results/door.json) -->"
END = "<!-- end of door figures -->"
_LABELS = {
    "ceiling": "ceiling (bare FastAPI, mint only)",
    "door-sqlite": "door, SQLite",
    "door-postgresql": "door, PostgreSQL, `DOOR_SHARED_STATE=database`",
    "door-postgresql-durable": "door, PostgreSQL with fsync and synchronous_commit on, `DOOR_SHARED_STATE=database`",
}


def _label(target: str) -> str:
    name, _, rev = target.partition("@")
    return f"{_LABELS.get(name, name)}, before (`{rev}`)" if rev else _LABELS.get(name, name)


def _goal_met(result: dict[str, Any]) -> bool:
    return bool(result["p99_ms"] <= GOAL_P99_MS and result["errors"] == 0)


def render_markdown(report: dict[str, Any]) -> str:
    """The README table and verdict from a run's report (the benchmark's JSON)."""
    by_target: dict[str, dict[str, dict[str, Any]]] = {}
    for result in report["results"]:
        by_target.setdefault(result["target"], {})[result["load"].split(",")[0]] = result
    rate = report["goal"].split(" at ")[1]
    lines = [
        f"| target | closed loop, {CONCURRENCY} in flight: req/s, p50 / p99 | open loop at {rate}: served req/s, "
        "p50 / p99 | CPU per request in the closed loop: door (PostgreSQL) |",
        "|---|---|---|---|",
    ]
    for target, loads in by_target.items():
        closed, opened = loads["closed loop"], loads["open loop"]
        postgres = closed.get("postgres_cpu_ms_per_request")
        cpu = f"{closed['server_cpu_ms_per_request']} ms" + (f" ({postgres} ms)" if postgres is not None else "")
        errors = f" ({opened['errors']} errors)" if opened["errors"] else ""
        lines.append(
            f"| {_label(target)} | {closed['requests_per_s']} req/s, {closed['p50_ms']} / {closed['p99_ms']} ms "
            f"| {opened['requests_per_s']} req/s, {opened['p50_ms']} / {opened['p99_ms']} ms{errors} | {cpu} |"
        )
    machine = report["machine"]
    verdicts = [
        f"{'met' if _goal_met(loads['open loop']) else '**missed**'} on {_label(target)} "
        f"(p99 {loads['open loop']['p99_ms']} ms)"
        for target, loads in by_target.items()
        if target != "ceiling"
    ]
    lines += [
        "",
        f"`{report['command']}` on {machine['logical_cores']} cores (Python {machine['python']}); load average "
        f"{machine['load_average_at_start'][0]} at the start, {machine['load_average_at_end'][0]} at the end (other "
        f"work on the machine shares its cores). Goal ({report['goal']}, no errors): " + "; ".join(verdicts) + ".",
    ]
    return "\n".join(lines)


def readme_block(report: dict[str, Any]) -> str:
    figures = {key: report[key] for key in ("command", "machine", "goal", "results")}
    return generated_block.block(BEGIN, END, figures, render_markdown(figures))


def readme_figures(text: str) -> tuple[dict[str, Any], str] | None:
    """(the run embedded in the README block, the table and verdict the block shows), or None without a block."""
    return generated_block.read(text, BEGIN, END)


def update_readme(source: Path) -> None:
    report = json.loads(source.read_text())
    generated_block.replace(README, BEGIN, END, readme_block(report), what="door figures")


# -- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.door", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--targets", default="ceiling,door-sqlite,door-postgresql,door-postgresql-durable")
    parser.add_argument(
        "--postgres-url", help="an empty PostgreSQL database for door-postgresql (default: a throwaway cluster)"
    )
    parser.add_argument("--baseline", metavar="REV", help="also run each door target from this git revision, first")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/door.json"))
    parser.add_argument(
        "--readme", action="store_true", help="write the README's door figures from --json (a run's report) and exit"
    )
    parser.add_argument("--serve-ceiling", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_ceiling:
        serve_ceiling(args.serve_ceiling)
        return 0
    if args.readme:
        update_readme(args.json)
        return 0

    from tests.doubles.door_process import VOICE_WORKER
    from tests.ports import free_port

    command = "python -m benchmarks.door " + shlex.join(argv if argv is not None else sys.argv[1:])
    load_at_start = [round(x, 1) for x in os.getloadavg()]
    print(f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}")
    # Other work on the machine shares its cores with the door and the client: the figures mean little without it.
    print(f"Load average at start (1/5/15 min): {' / '.join(f'{x:.1f}' for x in load_at_start)}")
    print(f"Command: {command.strip()}", flush=True)
    results: list[LoadResult] = []
    postgres = {
        "door-postgresql": _Postgres(args.postgres_url, durable=False),
        "door-postgresql-durable": _Postgres(None, durable=True),
    }
    baseline = checkout(args.baseline) if args.baseline else None
    runs: list[tuple[str, str, Path | None]] = []
    for target in args.targets.split(","):
        if baseline is not None and target != "ceiling":
            runs.append((f"{target}@{args.baseline}", target, baseline))
        runs.append((target, target, None))
    try:
        for name, target, code in runs:
            work = Path(tempfile.mkdtemp(prefix=f"bench-{target}-"))
            port = free_port()
            print(name, flush=True)
            if target == "ceiling":
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                argv_ = [sys.executable, "-m", "benchmarks.door", "--serve-ceiling", str(port)]
                with _process(argv_, env, work, port, "ceiling") as (url, process):
                    results += _run_target(url, name, args, process.pid, None)
                continue
            if target == "door-sqlite":
                env, postgres_pid = _door_env(work, port, f"sqlite:///{work / 'door.db'}", "memory"), None
            else:
                server = postgres[target]
                env, postgres_pid = _door_env(work, port, server.database(), "database"), server.pid
            with _process(_door_argv(code, VOICE_WORKER), env, work, port, name) as (url, process):
                results += _run_target(url, name, args, process.pid, postgres_pid)
    finally:
        for server in postgres.values():
            server.stop()
    report = {
        "command": command.strip(),
        "machine": {
            "logical_cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        },
        "goal": f"p99 <= {GOAL_P99_MS:g} ms at {args.rate:g} req/s",
        "results": [asdict(r) for r in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
