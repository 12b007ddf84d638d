"""All benchmarks, one command: `python -m benchmarks.run [--short] [--json PATH]`.

Prints a markdown report (the machine's core count and the command that produced it first) and writes every
figure to JSON (default benchmarks/results/run.json, run-short.json with --short):
1. call start (benchmarks/call_start.py);
2. per-turn overhead: end of the caller's speech -> first agent audio, minus what the VAD must wait for that
   audio and the providers' configured latencies, for the worker and for stock livekit-agents with the same
   doubles (STT 100 ms, LLM first token 300 ms then 20 ms a word, TTS first audio 100 ms, the sales agent's
   500 ms endpointing, three turns), measured here with the call simulator (benchmarks/simulator.py);
3. turn-1 penalty: benchmarks/turn1_penalty.py's last result (benchmarks/results/turn1_penalty.json), and the
   simulator's own turn 1 vs later turns;
4. density (benchmarks/density.py);
5. the real media path (benchmarks/real_server.py, in a process of its own: it moves into a private network
   namespace and needs root, the pinned livekit-server and espeak-ng): voice-to-voice and density at real
   WebRTC callers on a real livekit-server, the worker against stock livekit-agents; its own JSON
   (real_server.json beside this run's) is summarised in this one.
`--short` runs a few calls of each (CI: it keeps the benchmarks from rotting; its figures mean little).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import call_start, density
from benchmarks.simulator import (
    CallRecord,
    Environment,
    Tuning,
    TurnRecord,
    default_script,
    percentile,
    run_call,
)

RESULTS = Path(__file__).resolve().parent / "results"
TURN1_RESULTS = RESULTS / "turn1_penalty.json"
OVERHEAD_GOAL_MS = 30.0
TURN1_GOAL_MS = 20.0
# the platform's baseline notes (README "Performance"): stock livekit-agents 1.8.9, same doubles, 1 call
BASELINE_STOCK_NOMINAL_MS = (199.0, 229.0)

log = logging.getLogger("voice_worker.bench")


# -- 2. per-turn overhead ----------------------------------------------------------------------------------


@dataclass
class TurnSummary:
    tuning: str
    turns: int
    unanswered: int
    total_p50_ms: float | None
    endpointing_p50_ms: float | None
    overhead_p50_ms: float | None
    overhead_p95_ms: float | None
    nominal_p50_ms: float | None
    nominal_p95_ms: float | None
    turn1_minus_later_ms: float | None
    """p50 of turn 1 minus p50 of the later turns (turn 1 runs the procedure router)."""

    @property
    def meets_goal(self) -> bool:
        return self.unanswered == 0 and self.overhead_p50_ms is not None and self.overhead_p50_ms <= OVERHEAD_GOAL_MS


def summarize_turns(label: str, records: Sequence[CallRecord]) -> TurnSummary:
    turns: list[TurnRecord] = [t for r in records for t in r.turns]
    answered = [t for t in turns if t.answered]
    first = [t.total_ms for t in answered if t.index == 0]
    later = [t.total_ms for t in answered if t.index > 0]
    p_first, p_later = percentile(first, 50), percentile(later, 50)
    return TurnSummary(
        tuning=label,
        turns=len(turns),
        unanswered=len(turns) - len(answered) + sum(1 for r in records if r.error and not r.turns),
        total_p50_ms=percentile([t.total_ms for t in answered], 50),
        endpointing_p50_ms=percentile([t.endpointing_ms for t in answered], 50),
        overhead_p50_ms=percentile([t.overhead_ms for t in answered], 50),
        overhead_p95_ms=percentile([t.overhead_ms for t in answered], 95),
        nominal_p50_ms=percentile([t.overhead_nominal_ms for t in answered], 50),
        nominal_p95_ms=percentile([t.overhead_nominal_ms for t in answered], 95),
        turn1_minus_later_ms=None if p_first is None or p_later is None else p_first - p_later,
    )


async def measure_turns(env: Environment, tuning: Tuning, *, calls: int, turns: int, parallel: int) -> list[CallRecord]:
    """`calls` simulated calls, `parallel` at a time (a few concurrent calls do not change the latency:
    the density benchmark's lowest levels show it), in this process."""
    script = default_script(turns)
    await env.aprepare(script, tuning)
    records: list[CallRecord] = []
    for start in range(0, calls, parallel):
        batch = min(parallel, calls - start)
        records += await asyncio.gather(*(run_call(env, script, tuning=tuning) for _ in range(batch)))
    return records


def turn_overhead(short: bool) -> tuple[list[TurnSummary], list[CallRecord]]:
    tunings = [Tuning(), Tuning(stock=True)]
    if not short:
        tunings += [Tuning(text_transforms="none"), Tuning(tts="sentence")]
    calls, turns, parallel = (1, 1, 1) if short else (4, 3, 2)

    async def go() -> list[tuple[Tuning, list[CallRecord]]]:
        env = Environment.create()
        if short:  # one call of each, side by side: seconds instead of a minute
            results = await asyncio.gather(
                *(measure_turns(env, t, calls=calls, turns=turns, parallel=parallel) for t in tunings)
            )
            return list(zip(tunings, results, strict=True))
        return [(t, await measure_turns(env, t, calls=calls, turns=turns, parallel=parallel)) for t in tunings]

    measured = asyncio.run(go())
    summaries = [summarize_turns(t.label, records) for t, records in measured]
    return summaries, [r for _, records in measured for r in records]


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.0f} ms" if signed else f"{value:.0f} ms"


def turns_markdown(summaries: Sequence[TurnSummary]) -> str:
    lines = [
        "| pipeline | turns | end of speech -> first audio p50 | VAD's wait (p50) | overhead p50 / p95 "
        "| baseline formula p50 / p95 | turn 1 - later turns | goal (overhead p50 <= 30 ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        unanswered = f" ({s.unanswered} unanswered)" if s.unanswered else ""
        lines.append(
            f"| {s.tuning} | {s.turns}{unanswered} | {_ms(s.total_p50_ms)} | {_ms(s.endpointing_p50_ms)} "
            f"| {_ms(s.overhead_p50_ms)} / {_ms(s.overhead_p95_ms)} "
            f"| {_ms(s.nominal_p50_ms)} / {_ms(s.nominal_p95_ms)} "
            f"| {_ms(s.turn1_minus_later_ms, signed=True)} | {'met' if s.meets_goal else 'not met'} |"
        )
    p50, p95 = BASELINE_STOCK_NOMINAL_MS
    baseline = "stock livekit-agents, baseline notes (1 call)"
    lines.append(f"| {baseline} | - | - | - | - | {p50:.0f} ms / {p95:.0f} ms | - | - |")
    return "\n".join(lines)


# -- 3. turn-1 penalty -------------------------------------------------------------------------------------


def turn1_penalty() -> dict[str, Any] | None:
    """benchmarks/turn1_penalty.py's last result, if it has been run."""
    if not TURN1_RESULTS.exists():
        return None
    data = json.loads(TURN1_RESULTS.read_text())
    designs = {d["design"]: d for d in data.get("designs", [])}
    return {
        "source": str(TURN1_RESULTS.relative_to(RESULTS.parent.parent)),
        "written_at": datetime.fromtimestamp(TURN1_RESULTS.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        "designs": {
            name: {k: d[k] for k in ("calls", "turn1_p50_ms", "turn2_p50_ms", "penalty_p50_ms", "penalty_max_ms")}
            for name, d in designs.items()
        },
    }


def turn1_markdown(result: dict[str, Any] | None) -> str:
    if result is None:
        return "benchmarks/results/turn1_penalty.json not found: run `python -m benchmarks.turn1_penalty`."
    lines = [
        f"From `{result['source']}` (written {result['written_at']}):",
        "",
        "| design | calls | turn 1 p50 | turn 2 p50 | turn 1 - turn 2 p50 (max) | goal (<= 20 ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in result["designs"].items():
        met = "met" if d["penalty_p50_ms"] <= TURN1_GOAL_MS else "not met"
        lines.append(
            f"| {name} | {d['calls']} | {_ms(d['turn1_p50_ms'])} | {_ms(d['turn2_p50_ms'])} "
            f"| {_ms(d['penalty_p50_ms'], signed=True)} ({_ms(d['penalty_max_ms'], signed=True)}) "
            f"| {met if name == 'speculative' else '-'} |"
        )
    return "\n".join(lines)


# -- 4. density --------------------------------------------------------------------------------------------

# the worker as shipped, with each executor (JOB_EXECUTOR); the thread executor as deployed: one worker process
# per core (deploy/k8s). One-setting-at-a-time comparisons: `python -m benchmarks.density --variant ...`.
FULL_SWEEPS: tuple[tuple[density.Executor, str, int], ...] = (
    ("process", "default", 1),
    ("thread", "default", 2),
)


def run_density(short: bool) -> list[density.Sweep]:
    if short:  # the process executor's path covers the pool; the thread executor differs only in its type
        return [density.sweep("process", density.VARIANTS["default"], (2,), turns=1, stagger_s=0.5)]
    return [
        density.sweep(executor, density.VARIANTS[variant], workers=workers)
        for executor, variant, workers in FULL_SWEEPS
    ]


# -- 5. the real media path -------------------------------------------------------------------------------


def run_real_server(short: bool, run_json: Path) -> dict[str, Any]:
    """benchmarks/real_server.py in its own process (its network namespace must be made before any thread, and
    this process has threads); its JSON lands beside this run's. On failure, what went wrong instead of figures."""
    from benchmarks import real_server

    path = real_server.default_json(short, run_json.parent)
    command = [sys.executable, "-m", "benchmarks.real_server", "--json", str(path)] + (["--short"] if short else [])
    proc = subprocess.run(command, cwd=RESULTS.parent.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-3000:], "json": str(path)}
    report: dict[str, Any] = json.loads(path.read_text())
    return {"json": str(path), "summary": report["summary"], "markdown": real_server.render_markdown(report["summary"])}


# -- the report ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import psutil

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "livekit_agents": version("livekit-agents"),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a few calls of each benchmark (CI)")
    parser.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/)")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["call_start", "turns", "turn1", "density", "real_server"],
        help="run only these benchmarks (default: all)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    only = set(args.only or ["call_start", "turns", "turn1", "density", "real_server"])
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    started = time.time()
    box = machine()
    report: dict[str, Any] = {
        "command": command.strip(),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "short": args.short,
        "machine": box,
    }
    sections = [
        f"Machine: {box['logical_cores']} cores ({box['physical_cores']} physical), {box['memory_gib']} GiB, "
        f"load average {box['load_average_at_start'][0]:.2f} at start; livekit-agents {box['livekit_agents']}, "
        f"Python {box['python']}.  ",
        f"Command: `{command.strip()}`"
        + ("  (short mode: a few calls; the figures are not meaningful)" if args.short else ""),
    ]

    background: dict[str, Future[Any]] = {}
    pool = ThreadPoolExecutor(2)
    if args.short:
        # short mode only proves the benchmarks still run: run them side by side to keep CI quick
        if "call_start" in only:
            background["call_start"] = pool.submit(call_start.run, True)
        if "density" in only:
            background["density"] = pool.submit(run_density, True)

    if "turns" in only:
        summaries, records = turn_overhead(args.short)
        report["turn_overhead"] = {
            "summaries": [{**vars(s), "meets_goal": s.meets_goal} for s in summaries],
            "baseline_stock_nominal_p50_p95_ms": BASELINE_STOCK_NOMINAL_MS,
            "calls": [r.as_dict() for r in records],
        }
        sections += ["", "### Per-turn overhead (end of speech -> first agent audio)", "", turns_markdown(summaries)]
    if "call_start" in only:
        starts = background["call_start"].result() if "call_start" in background else call_start.run(args.short)
        report["call_start"] = call_start.as_dicts(starts)
        title = "### Call start (entrypoint -> first greeting frame - TTS latency)"
        sections += ["", title, "", call_start.markdown(starts)]
    if "turn1" in only:
        penalty = turn1_penalty()
        report["turn1_penalty"] = penalty
        sections += ["", "### Turn-1 penalty (procedure routing)", "", turn1_markdown(penalty)]
    if "density" in only:
        sweeps = background["density"].result() if "density" in background else run_density(args.short)
        report["density"] = [s.as_dict() for s in sweeps]
        sections += ["", f"### Density ({box['logical_cores']} cores)", "", density.markdown(sweeps)]

    path = args.json or RESULTS / ("run-short.json" if args.short else "run.json")
    if "real_server" in only:
        real = run_real_server(args.short, path)
        report["real_server"] = real
        title = f"### Real livekit-server, real WebRTC callers ({box['logical_cores']} cores)"
        sections += ["", title, "", real.get("markdown") or f"FAILED:\n```\n{real['error']}\n```"]
        sections.append(f"\nFull figures: {real['json']}")

    pool.shutdown()
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["load_average_at_end"] = os.getloadavg()
    report["duration_s"] = round(time.time() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(sections))
    print(f"\nResults: {path} ({report['duration_s']} s)")
    if "error" in report.get("real_server", {}):
        raise SystemExit("the real-server benchmark failed (see above); the other figures were written")
    return report


if __name__ == "__main__":
    main()
