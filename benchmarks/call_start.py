"""Call start: the job's entrypoint entered -> the greeting's first audio frame, minus the TTS double's latency.

Measured in job processes made the way the worker makes them (the `forkserver` context with the preload list
`AgentServer` sets), with the file catalog, and the setup function's work done first as
`worker.server.setup_process` does it (worker/services.py: the VAD model, the catalog, every pipeline
prebuilt, `gc.freeze()`):
- `warm`: one process, many calls one after another (after one call to warm it): a process that has served
  calls before, as under the thread executor;
- `cold`: one fresh process per call: the process executor, where every call is the first of its process.

Usage: `python -m benchmarks.call_start [--short]`; `benchmarks.run` includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from benchmarks.simulator import CallScript, Environment, percentile, run_call

Mode = Literal["warm", "cold"]
GOAL_P50_MS = 25.0
GOAL_P99_MS = 60.0
GREETING_ONLY = CallScript(turns=())
CHILD_TIMEOUT_S = 120.0


@dataclass
class StartSummary:
    mode: str
    calls: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: int
    samples_ms: list[float] = field(default_factory=list)

    @property
    def meets_goal(self) -> bool:
        return (
            self.errors == 0
            and self.p50_ms is not None
            and self.p99_ms is not None
            and self.p50_ms <= GOAL_P50_MS
            and self.p99_ms <= GOAL_P99_MS
        )


def _setup() -> Environment:
    """What the job process's setup function does (worker.server.setup_process), with the simulator's settings."""
    from worker.services import freeze_once, prebuild_pipelines, process_vad

    env = Environment.create(vad=process_vad())
    prebuild_pipelines(env.catalog, env.settings, env.vad)
    freeze_once()
    return env


def _child(queue: Any, calls: int, warm_up: bool) -> None:
    try:
        env = _setup()

        async def go() -> list[tuple[float | None, str | None]]:
            if warm_up:
                await run_call(env, GREETING_ONLY)
            out = []
            for _ in range(calls):
                record = await run_call(env, GREETING_ONLY)
                out.append((record.call_start_ms, record.error))
            return out

        queue.put(asyncio.run(go()))
    except Exception as exc:  # reported to the parent as a failed sample
        queue.put([(None, f"{type(exc).__name__}: {exc}")])


def _in_job_process(ctx: Any, calls: int, warm_up: bool) -> list[tuple[float | None, str | None]]:
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(queue, calls, warm_up), name="job_proc")
    process.start()
    try:
        return queue.get(timeout=CHILD_TIMEOUT_S)
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def measure(mode: Mode, calls: int, ctx: Any) -> StartSummary:
    if mode == "warm":
        results = _in_job_process(ctx, calls, warm_up=True)
    else:
        results = [r for _ in range(calls) for r in _in_job_process(ctx, 1, warm_up=False)]
    samples = [ms for ms, error in results if ms is not None and error is None]
    return StartSummary(
        mode=mode,
        calls=len(results),
        p50_ms=percentile(samples, 50),
        p99_ms=percentile(samples, 99),
        max_ms=max(samples, default=None),
        errors=sum(1 for ms, error in results if error is not None or ms is None),
        samples_ms=samples,
    )


def run(short: bool = False) -> list[StartSummary]:
    from benchmarks.density import forkserver_context

    ctx = forkserver_context(preload_app=False)
    warm_calls, cold_calls = (3, 1) if short else (50, 12)
    return [measure(mode, warm_calls if mode == "warm" else cold_calls, ctx) for mode in ("warm", "cold")]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def markdown(summaries: Sequence[StartSummary]) -> str:
    lines = [
        "| process | calls | p50 | p99 | max | goal (p50 <= 25, p99 <= 60 ms) |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        label = "warm (has served calls)" if s.mode == "warm" else "cold (first call of the process)"
        errors = f", {s.errors} failed" if s.errors else ""
        lines.append(
            f"| {label} | {s.calls}{errors} | {_fmt(s.p50_ms)} | {_fmt(s.p99_ms)} | {_fmt(s.max_ms)} "
            f"| {'met' if s.meets_goal else 'not met'} |"
        )
    return "\n".join(lines)


def as_dicts(summaries: Sequence[StartSummary]) -> list[dict[str, Any]]:
    return [{**asdict(s), "meets_goal": s.meets_goal} for s in summaries]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a few calls (CI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    # through the importable module, not __main__: job processes find `_child` by its module's name
    module = importlib.import_module("benchmarks.call_start")
    print(module.markdown(module.run(args.short)))


if __name__ == "__main__":
    mp.freeze_support()
    main()
