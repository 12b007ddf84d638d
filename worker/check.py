"""`voice-worker check`: every problem a call would otherwise hit, as `file: field: reason` lines, and every setting
that cannot apply where the worker runs, as warnings in the same form (they do not fail the check)."""

from __future__ import annotations

from pathlib import Path

from catalog.loader import Catalog, CatalogProblem, load_catalog
from pipelines.applicability import pipeline_warnings
from pipelines.validate import pipeline_problems
from procedures.validate import first_speaking_problems, revision_problems, team_problems
from tools.validate import revision_tool_problems, tool_problems
from worker.settings import Settings


def catalog_problems(catalog: Catalog, settings: Settings) -> list[CatalogProblem]:
    problems = list(catalog.problems)
    for agent_id, agent in catalog.agents.items():
        source = catalog.sources[agent_id]
        index = next(i for i, r in enumerate(agent.revisions) if r.id == agent.active_revision_id)
        prefix = f"revisions[{index}]"
        revision = agent.active_revision
        for p in pipeline_problems(revision.pipeline, settings, where=f"{prefix}.pipeline"):
            problems.append(CatalogProblem(source, p.field, p.reason))
        for t in revision_problems(revision, prefix):
            problems.append(CatalogProblem(source, t.field, t.reason))
        for tool_problem in revision_tool_problems(revision, prefix, catalog.tools, agent=agent, teams=catalog.teams):
            problems.append(CatalogProblem(source, tool_problem.field, tool_problem.reason))
    for tool_id, tool in catalog.tools.items():
        for tool_problem in tool_problems(
            tool, env_prefix=settings.tool_env_prefix, sip_trunk_configured=bool(settings.sip_outbound_trunk_id)
        ):
            problems.append(CatalogProblem(catalog.sources[tool_id], tool_problem.field, tool_problem.reason))
    for team_id, team in catalog.teams.items():
        source = catalog.sources[team_id]
        for p in pipeline_problems(team.pipeline, settings, where="pipeline"):
            problems.append(CatalogProblem(source, p.field, p.reason))
        # A team greets with its initial member, so its greeting may use that member's variables.
        initial = catalog.agents[team.initial_member.assistant_id].active_revision
        declared = frozenset(v.name for v in initial.context_variables)
        for t in [*first_speaking_problems(team.pipeline, declared, "pipeline"), *team_problems(team, catalog.agents)]:
            problems.append(CatalogProblem(source, t.field, t.reason))
    return problems


def catalog_warnings(catalog: Catalog) -> list[CatalogProblem]:
    """Pipeline fields of active revisions and teams that are valid but do nothing here, or not for every caller."""
    warnings: list[CatalogProblem] = []
    for agent_id, agent in catalog.agents.items():
        index = next(i for i, r in enumerate(agent.revisions) if r.id == agent.active_revision_id)
        for w in pipeline_warnings(agent.active_revision.pipeline, where=f"revisions[{index}].pipeline"):
            warnings.append(CatalogProblem(catalog.sources[agent_id], w.field, w.reason))
    for team_id, team in catalog.teams.items():
        for w in pipeline_warnings(team.pipeline, where="pipeline"):
            warnings.append(CatalogProblem(catalog.sources[team_id], w.field, w.reason))
    return warnings


def check_catalog(directory: Path, settings: Settings) -> tuple[Catalog, list[CatalogProblem]]:
    catalog = load_catalog(directory)
    return catalog, catalog_problems(catalog, settings)
