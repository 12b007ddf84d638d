"""`voice-worker simulate PATH… [--mode text|voice] [--parallel N] [--junit FILE] [--report FILE.html]`.

Scenario files (or directories of them) run against the catalog's agents: progress on stderr, a summary table
on stdout, exit 0 only when every expectation of every scenario held, 1 when one did not, 2 when a scenario file
cannot run at all (its schema or the catalog)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cli.common import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, load_cli_settings

if TYPE_CHECKING:  # imported when a simulation runs: `voice-worker start` parses this module's options too
    from simulations.results import ScenarioResult
    from simulations.scenario import ScenarioFile
    from simulations.suite import Runner


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run scenario files against the catalog's agents (text: the real session without audio; voice: a real "
        "call through LiveKit); exit 0 only when every expectation holds",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="scenario files, or directories searched for them")
    p.add_argument(
        "--mode",
        choices=["text", "voice"],
        default="text",
        help="text (default): the real session without a room or audio; voice: a real call through LiveKit "
        "(LIVEKIT_URL) to the worker registered as AGENT_NAME, read back from the session records (DATABASE_URL)",
    )
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="scenarios run at once (default 1)")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML here")
    p.add_argument("--report", type=Path, metavar="FILE.html", help="write the HTML report here")
    p.add_argument("--catalog", help="catalog directory (default: CATALOG_PATH or the example catalog)")
    p.add_argument("--verbose", action="store_true", help="show livekit's and the providers' log records")


def simulate(args: argparse.Namespace) -> int:
    from catalog.loader import load_catalog
    from simulations.models import provider_models
    from simulations.suite import load_scenarios

    settings = load_cli_settings(args)
    settings.require_production_secrets()
    _logging(verbose=args.verbose)
    if args.parallel < 1:
        print("voice-worker: --parallel must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    catalog = load_catalog(settings.catalog_path)
    files, problems = load_scenarios([Path(p) for p in args.paths], catalog)
    for problem in problems:
        print(f"voice-worker: scenario problem: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    if not files:
        print(f"voice-worker: no scenario files (kind: scenario) in {' '.join(args.paths)}", file=sys.stderr)
        return EXIT_USAGE
    runner: Runner
    if args.mode == "voice":
        from simulations.voice_mode import VoiceRunner

        runner = VoiceRunner.from_settings(settings, catalog, provider_models(settings))
    else:
        from simulations.text_mode import TextRunner

        runner = TextRunner.from_settings(settings, provider_models(settings))
    results = asyncio.run(_run(files, runner, args.parallel, sys.stderr))
    return report(results, out=sys.stdout, junit=args.junit, html=args.report)


async def _run(files: list[ScenarioFile], runner: Runner, parallel: int, err: TextIO) -> list[ScenarioResult]:
    from simulations.suite import run_all

    total = len(files)
    print(f"simulating {total} scenario(s), {parallel} at a time", file=err, flush=True)

    def done(count: int, result: ScenarioResult) -> None:
        filled = round(20 * count / total)
        verdict = "PASS" if result.passed else "FAIL"
        print(
            f"[{'#' * filled}{'-' * (20 - filled)}] {count}/{total} {verdict} {result.scenario} "
            f"({result.duration_s:.1f} s)",
            file=err,
            flush=True,
        )

    return await run_all(files, runner, parallel=parallel, on_done=done)


def check(args: argparse.Namespace) -> int:
    """`voice-worker check`: the catalog (cli/worker_commands.py), then the scenario files kept in it, one
    `file: field: reason` line per problem; a scenario that could never pass is a problem like a bad agent."""
    from catalog.loader import load_catalog
    from cli.worker_commands import check as check_catalog
    from simulations.suite import load_scenarios

    code = check_catalog(args)
    settings = load_cli_settings(args)
    _, problems = load_scenarios([settings.catalog_path], load_catalog(settings.catalog_path))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} scenario problem(s) in {settings.catalog_path}", file=sys.stderr)
        return EXIT_PROBLEMS
    return code


def report(results: list[ScenarioResult], *, out: TextIO, junit: Path | None, html: Path | None) -> int:
    """The summary table, the failures with their reasons, the files; the exit code."""
    from simulations.report import html_report, junit_xml

    width = max(len(r.scenario) for r in results)
    print(f"{'scenario':<{width}}  mode   result  checks  judged  time", file=out)
    for r in results:
        held = sum(1 for c in r.checks if c.passed)
        judged = sum(1 for j in r.judges if j.passed)
        print(
            f"{r.scenario:<{width}}  {r.mode:<5}  {'pass' if r.passed else 'FAIL':<6}  "
            f"{held:>2}/{len(r.checks):<3}  {judged:>2}/{len(r.judges):<3}  {r.duration_s:5.1f} s",
            file=out,
        )
    for r in results:
        if not r.passed:
            print(f"\n{r.scenario} ({r.file}) failed:", file=out)
            for line in r.failures:
                print(f"  - {line}", file=out)
    if junit is not None:
        junit.write_text(junit_xml(results), encoding="utf-8")
    if html is not None:
        html.write_text(html_report(results), encoding="utf-8")
    passed = sum(1 for r in results if r.passed)
    print(f"\n{passed} of {len(results)} scenario(s) passed", file=out)
    return EXIT_OK if passed == len(results) else EXIT_PROBLEMS


def _logging(*, verbose: bool) -> None:
    """The results say what failed and why; livekit's own records of a failing provider would bury them."""
    import logging

    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    else:
        logging.getLogger().addHandler(logging.NullHandler())
