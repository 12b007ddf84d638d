"""Running many scenarios: loading and checking the files against the catalog, then running them N at a time
with either mode's runner, reporting each as it finishes. Results keep the order the files were given in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from catalog.loader import Catalog
from simulations.results import ScenarioResult
from simulations.scenario import ScenarioFile, ScenarioProblem, find_scenario_files, load_scenario, scenario_problems


class Runner(Protocol):
    async def run(self, file: ScenarioFile) -> ScenarioResult: ...


def load_scenarios(paths: Sequence[Path], catalog: Catalog) -> tuple[list[ScenarioFile], list[ScenarioProblem]]:
    """Every scenario under `paths`, and every problem that keeps one from running (schema or catalog)."""
    files: list[ScenarioFile] = []
    problems: list[ScenarioProblem] = []
    for path in find_scenario_files(paths):
        if not path.is_file():
            problems.append(ScenarioProblem(str(path), "(file)", "does not exist"))
            continue
        scenario, found = load_scenario(path)
        problems += found
        if scenario is None:
            continue
        found = scenario_problems(scenario, catalog, str(path))
        problems += found
        if not found:
            files.append(ScenarioFile(path, scenario))
    names: dict[str, Path] = {}
    for file in files:
        if file.scenario.name in names:
            problems.append(
                ScenarioProblem(
                    str(file.path), "name", f"{file.scenario.name!r} is also the name in {names[file.scenario.name]}"
                )
            )
        names.setdefault(file.scenario.name, file.path)
    return files, problems


async def run_all(
    files: Sequence[ScenarioFile],
    runner: Runner,
    *,
    parallel: int = 1,
    on_done: Callable[[int, ScenarioResult], Awaitable[None] | None] | None = None,
) -> list[ScenarioResult]:
    gate = asyncio.Semaphore(max(parallel, 1))
    finished = 0

    async def one(file: ScenarioFile) -> ScenarioResult:
        nonlocal finished
        async with gate:
            result = await runner.run(file)
        finished += 1
        if on_done is not None:
            maybe = on_done(finished, result)
            if maybe is not None:
                await maybe
        return result

    return list(await asyncio.gather(*(one(f) for f in files)))
