"""Loading the catalog from a directory of YAML files (one agent, team, tool or persona per file).

Each file is parsed and validated on its own: a bad file becomes a `CatalogProblem` (file, field path,
reason) and is left out, so one bad file never takes the others down. `CatalogStore` keeps the last good
load in memory and reloads when a file changes (a ConfigMap update, an edit in dev), at most once per
`recheck_s`, so a running worker picks up changes without a restart and without a stat per request burst.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from catalog.models import Agent, Team
from catalog.personas import Persona
from catalog.tools import ToolDefinition, ToolRef, find_tool

log = logging.getLogger("voice_worker.catalog")

_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class CatalogProblem:
    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


@dataclass
class Catalog:
    agents: dict[uuid.UUID, Agent] = field(default_factory=dict)
    teams: dict[uuid.UUID, Team] = field(default_factory=dict)
    # Platform tools (kind: tool), conventionally under tools/; revisions attach them by id or slug.
    tools: dict[uuid.UUID, ToolDefinition] = field(default_factory=dict)
    # Personas (kind: persona), conventionally under personas/; a pipeline's persona_id names one.
    personas: dict[uuid.UUID, Persona] = field(default_factory=dict)
    problems: list[CatalogProblem] = field(default_factory=list)
    sources: dict[uuid.UUID, str] = field(default_factory=dict)

    def tool_for(self, ref: ToolRef) -> ToolDefinition | None:
        """The tool a revision's `ToolRef` names (by id, else by slug), or None."""
        return find_tool(self.tools, ref)

    def summary(self) -> str:
        enabled_agents = sum(a.enabled for a in self.agents.values())
        procedures = sum(len(a.active_revision.procedures) for a in self.agents.values())
        return (
            f"{len(self.agents)} agents ({enabled_agents} enabled), {len(self.teams)} teams, "
            f"{procedures} procedures on active revisions, {len(self.tools)} tools"
        )


def _field_path(loc: Iterable[object]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(document)"


Item = Agent | Team | ToolDefinition | Persona


def _load_file(path: Path, display: str) -> tuple[Item | None, list[CatalogProblem]]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, [CatalogProblem(display, "(file)", f"cannot read: {exc}")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(document)"
        return None, [CatalogProblem(display, where, f"invalid YAML: {getattr(exc, 'problem', exc)}")]
    if not isinstance(document, dict):
        return None, [
            CatalogProblem(display, "(document)", "expected a mapping with kind: agent, team, tool or persona")
        ]
    kind = document.pop("kind", None)
    model: type[Agent] | type[Team] | type[ToolDefinition] | type[Persona]
    if kind == "agent":
        model = Agent
    elif kind == "team":
        model = Team
    elif kind == "tool":
        model = ToolDefinition
    elif kind == "persona":
        model = Persona
    elif kind == "scenario":
        # a simulation's scenario (simulations/scenario.py): kept beside the agents it calls, not part of the catalog;
        # `voice-worker check` and `simulate` validate it
        return None, []
    else:
        return None, [
            CatalogProblem(display, "kind", f"must be 'agent', 'team', 'tool', 'persona' or 'scenario', not {kind!r}")
        ]
    try:
        return model.model_validate(document), []
    except ValidationError as exc:
        return None, [
            CatalogProblem(display, _field_path(err["loc"]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors()
        ]


def load_tool_file(path: Path) -> tuple[ToolDefinition | None, list[CatalogProblem]]:
    """One tool file on its own (`voice-worker tool-call --tool-file`)."""
    item, problems = _load_file(path, str(path))
    if problems:
        return None, problems
    if not isinstance(item, ToolDefinition):
        return None, [CatalogProblem(str(path), "kind", "must be 'tool' for a tool file")]
    return item, []


def load_catalog(directory: Path) -> Catalog:
    catalog = Catalog()
    if not directory.is_dir():
        catalog.problems.append(CatalogProblem(str(directory), "(directory)", "catalog directory does not exist"))
        return catalog
    files = sorted(p for p in directory.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
    for path in files:
        display = str(path.relative_to(directory))
        item, problems = _load_file(path, display)
        catalog.problems.extend(problems)
        if item is None:
            continue
        if item.id in catalog.sources:
            catalog.problems.append(
                CatalogProblem(display, "id", f"{item.id} is already defined in {catalog.sources[item.id]}")
            )
            continue
        if isinstance(item, ToolDefinition):
            owner = next((catalog.sources[t.id] for t in catalog.tools.values() if t.slug == item.slug), None)
            if owner is not None:
                catalog.problems.append(CatalogProblem(display, "slug", f"{item.slug!r} is already used by {owner}"))
                continue
        catalog.sources[item.id] = display
        if isinstance(item, Agent):
            catalog.agents[item.id] = item
        elif isinstance(item, Team):
            catalog.teams[item.id] = item
        elif isinstance(item, Persona):
            catalog.personas[item.id] = item
        else:
            catalog.tools[item.id] = item
    for agent in catalog.agents.values():
        r_index = next(i for i, r in enumerate(agent.revisions) if r.id == agent.active_revision_id)
        for t_index, ref in enumerate(agent.active_revision.tool_refs):
            if ref.kind == "api" and catalog.tool_for(ref) is None:
                # The agent still loads: its calls run without this tool, and `voice-worker check` says so.
                catalog.problems.append(
                    CatalogProblem(
                        catalog.sources[agent.id],
                        f"revisions[{r_index}].tool_refs[{t_index}]",
                        f"tool {ref.label} is not in the catalog (a file with kind: tool)",
                    )
                )
    catalog.problems.extend(_persona_problems(catalog))
    for team in list(catalog.teams.values()):
        for index, member in enumerate(team.members):
            if member.assistant_id not in catalog.agents:
                catalog.problems.append(
                    CatalogProblem(
                        catalog.sources[team.id],
                        f"members[{index}].assistant_id",
                        f"agent {member.assistant_id} is not in the catalog",
                    )
                )
                # A team whose member does not exist would fail mid-call at handoff; leave it out.
                del catalog.teams[team.id]
                break
    if not files:
        catalog.problems.append(CatalogProblem(str(directory), "(directory)", "no .yaml files found"))
    return catalog


def _persona_problems(catalog: Catalog) -> list[CatalogProblem]:
    """A pipeline naming a persona the catalog lacks: the agent or team still loads, and `check` says so."""
    named: list[tuple[uuid.UUID, str, uuid.UUID | None]] = [
        (
            agent.id,
            f"revisions[{next(i for i, r in enumerate(agent.revisions) if r.id == agent.active_revision_id)}].pipeline",
            agent.active_revision.pipeline.persona_id,
        )
        for agent in catalog.agents.values()
    ]
    named += [(team.id, "pipeline", team.pipeline.persona_id) for team in catalog.teams.values()]
    return [
        CatalogProblem(
            catalog.sources[owner], f"{where}.persona_id", f"persona {persona_id} is not in the catalog (kind: persona)"
        )
        for owner, where, persona_id in named
        if persona_id is not None and persona_id not in catalog.personas
    ]


class CatalogStore:
    """The worker's view of the catalog: last good load, reloaded when files change."""

    def __init__(self, directory: Path, *, recheck_s: float = 2.0) -> None:
        self._directory = directory
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._fingerprint: tuple[tuple[str, float, int], ...] | None = None
        self._checked_at = 0.0
        self._catalog = Catalog()

    @property
    def directory(self) -> Path:
        return self._directory

    def _current_fingerprint(self) -> tuple[tuple[str, float, int], ...]:
        entries = []
        for path in sorted(self._directory.rglob("*")):
            if path.suffix in _SUFFIXES and path.is_file():
                stat = path.stat()
                entries.append((str(path), stat.st_mtime, stat.st_size))
        return tuple(entries)

    def get(self) -> Catalog:
        now = time.monotonic()
        with self._lock:
            if self._fingerprint is not None and now - self._checked_at < self._recheck_s:
                return self._catalog
            self._checked_at = now
            try:
                fingerprint = self._current_fingerprint()
            except OSError as exc:
                log.error("catalog directory %s unreadable (%s); keeping the last good catalog", self._directory, exc)
                return self._catalog
            if fingerprint != self._fingerprint:
                catalog = load_catalog(self._directory)
                for problem in catalog.problems:
                    log.error("catalog problem: %s", problem)
                log.info("catalog loaded from %s: %s", self._directory, catalog.summary())
                self._catalog, self._fingerprint = catalog, fingerprint
            return self._catalog
