"""A scenario file (`kind: scenario`, YAML): who is called, who calls, and what must hold afterwards.

The schema is documented in docs/simulations.md. Files are validated on their own (`load_scenario`) and against
the catalog (`scenario_problems`: the agent or team exists, the procedures, tools, variables and members the
expectations name are the target's), so `voice-worker check` reports a scenario that could never pass.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalog.loader import Catalog
from catalog.models import Revision
from catalog.pipeline_config import ModelChainEntry, STTEntry, TTSEntry

# Built-in tools every procedure may grant (procedures/tools.py, procedures/team.py) beside platform tools.
BUILTIN_TOOLS = frozenset({"end_call", "record_variable", "handoff", "transfer_to_member"})
# livekit-agents' judges (livekit.agents.evals) a rubric item may name instead of writing its own criteria.
BUILTIN_JUDGES = frozenset(
    {"task_completion", "tool_use", "accuracy", "safety", "relevancy", "coherence", "conciseness", "handoff"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    return value


class Turn(_Strict):
    """One scripted caller turn: what the caller says."""

    say: str = Field(min_length=1)


class CallerVoice(_Strict):
    """The voice mode caller's speech: TTS to speak, STT to hear the agent. Unset: the agent pipeline's own first
    entries (a simulated caller sounds like the kind of voice the agent's STT is tuned for)."""

    tts: TTSEntry | None = None
    stt: STTEntry | None = None


class Caller(_Strict):
    """Either `turns` (a script) or `persona` + `goal` (an LLM plays the caller)."""

    turns: tuple[Turn, ...] = ()
    persona: str | None = None
    goal: str | None = None
    # the persona's LLM; unset: the agent pipeline's primary model
    model: ModelChainEntry | None = None
    # a persona's turns are bounded: it hangs up after this many turns if it has not already
    max_turns: int = Field(8, ge=1, le=50)
    voice: CallerVoice = CallerVoice()

    @model_validator(mode="after")
    def _one_kind(self) -> Caller:
        scripted, played = bool(self.turns), self.persona is not None or self.goal is not None
        if scripted == played:
            raise ValueError("give either turns (a script) or persona and goal (an LLM caller), not both or neither")
        if played and not (self.persona and self.goal):
            raise ValueError("an LLM caller needs both persona and goal")
        return self

    @property
    def scripted(self) -> bool:
        return bool(self.turns)


class Matcher(_Strict):
    """How one tool argument must look. A bare value in YAML means `equals`."""

    equals: Any = None
    regex: str | None = None
    contains: str | None = None
    present: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) <= {"equals", "regex", "contains", "present"} and value:
            return value
        return {"equals": value}

    @model_validator(mode="after")
    def _one(self) -> Matcher:
        given = [k for k in ("regex", "contains", "present") if getattr(self, k) is not None]
        if len(given) > 1 or (given and self.equals is not None):
            raise ValueError("a matcher is one of equals, regex, contains, present")
        if self.regex is not None:
            _regex(self.regex)
        return self

    def matches(self, value: Any, *, given: bool) -> bool:
        if self.present is not None:
            return given == self.present
        if not given:
            return False
        if self.regex is not None:
            return re.search(self.regex, _text(value)) is not None
        if self.contains is not None:
            return self.contains.lower() in _text(value).lower()
        # YAML `1042` and the LLM's "1042" are the same answer: compare as text unless both are structures
        if isinstance(self.equals, (dict, list)) or isinstance(value, (dict, list)):
            return bool(self.equals == value)
        return _text(self.equals) == _text(value)

    def describe(self) -> str:
        if self.present is not None:
            return "present" if self.present else "absent"
        if self.regex is not None:
            return f"matches /{self.regex}/"
        if self.contains is not None:
            return f"contains {self.contains!r}"
        return f"= {self.equals!r}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class ToolExpectation(_Strict):
    name: str = Field(min_length=1)
    arguments: dict[str, Matcher] = Field(default_factory=dict)
    # `called: false` says the tool must not run (with these arguments, when given)
    called: bool = True


class RubricItem(_Strict):
    """Judged by an LLM `runs` times; holds when at least `pass_threshold` of the runs pass."""

    criteria: str | None = None
    judge: str | None = None
    runs: int = Field(1, ge=1, le=20)
    pass_threshold: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _valid(self) -> RubricItem:
        if (self.criteria is None) == (self.judge is None):
            raise ValueError("a rubric item has either criteria (free text) or judge (a livekit-agents judge)")
        if self.judge is not None and self.judge not in BUILTIN_JUDGES:
            raise ValueError(f"judge must be one of {', '.join(sorted(BUILTIN_JUDGES))}, not {self.judge!r}")
        if self.pass_threshold is not None and self.pass_threshold > self.runs:
            raise ValueError(f"pass_threshold {self.pass_threshold} is more than runs {self.runs}")
        return self

    @property
    def required(self) -> int:
        """Passing runs needed; unset: every run."""
        return self.runs if self.pass_threshold is None else self.pass_threshold

    @property
    def label(self) -> str:
        return self.criteria if self.criteria is not None else f"{self.judge} judge"


class Expectations(_Strict):
    # the procedure chosen on turn 1 (its name); `none` expects the revision's own behaviour
    procedure: str | None = None
    tools: tuple[ToolExpectation, ...] = ()
    # context variables as recorded at the end of the call (values compared as text, like tool arguments)
    variables: dict[str, Matcher] = Field(default_factory=dict)
    # a team's members the call moves to, in order (router names); [] expects no handoff
    handoffs: tuple[str, ...] | None = None
    said: tuple[str, ...] = ()
    never_said: tuple[str, ...] = ()
    end_reason: str | None = None
    max_turns: int | None = Field(None, ge=1)
    latency_budget_ms: float | None = Field(None, gt=0)
    rubric: tuple[RubricItem, ...] = ()

    @field_validator("said", "never_said")
    @classmethod
    def _regexes(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_regex(v) for v in values)


class Scenario(_Strict):
    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][\w.-]*$")
    description: str | None = None
    agent_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    context_variables: dict[str, Any] = Field(default_factory=dict)
    caller: Caller
    expect: Expectations = Expectations()
    # the rubric's judge; unset: the agent pipeline's primary model
    judge_model: ModelChainEntry | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Scenario:
        if (self.agent_id is None) == (self.team_id is None):
            raise ValueError("give exactly one of agent_id and team_id")
        if self.team_id is not None and self.context_variables:
            raise ValueError("context_variables seed an agent's call; a team call takes none")
        return self


@dataclass(frozen=True)
class ScenarioFile:
    path: Path
    scenario: Scenario


@dataclass(frozen=True)
class ScenarioProblem:
    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


def _field(loc: Iterable[object]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def load_scenario(path: Path, display: str | None = None) -> tuple[Scenario | None, list[ScenarioProblem]]:
    shown = display or str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return None, [ScenarioProblem(shown, "(document)", f"cannot be read: {type(exc).__name__}")]
    if not isinstance(document, dict) or document.get("kind") != "scenario":
        return None, [ScenarioProblem(shown, "kind", "must be 'scenario'")]
    document = {k: v for k, v in document.items() if k != "kind"}
    try:
        return Scenario.model_validate(document), []
    except ValidationError as exc:
        return None, [
            ScenarioProblem(shown, _field(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()
        ]


def is_scenario_file(path: Path) -> bool:
    """Whether a YAML file declares `kind: scenario` (cheap: the catalog's directory mixes kinds)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(document, dict) and document.get("kind") == "scenario"


def find_scenario_files(paths: Iterable[Path]) -> list[Path]:
    """Files named, and `kind: scenario` YAML files below directories named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.suffix in (".yaml", ".yml") and p.is_file() and is_scenario_file(p)
            )
        else:
            found.append(path)
    return found


def scenario_problems(scenario: Scenario, catalog: Catalog, file: str) -> list[ScenarioProblem]:
    """What the scenario names that its target lacks: it would fail on the catalog, not on the agent's behaviour."""
    problems: list[ScenarioProblem] = []

    def problem(field: str, reason: str) -> None:
        problems.append(ScenarioProblem(file, field, reason))

    revisions: list[Revision] = []
    members: set[str] = set()
    if scenario.agent_id is not None:
        agent = catalog.agents.get(scenario.agent_id)
        if agent is None:
            problem("agent_id", f"agent {scenario.agent_id} is not in the catalog")
            return problems
        revisions.append(agent.active_revision)
    elif scenario.team_id is not None:
        team = catalog.teams.get(scenario.team_id)
        if team is None:
            problem("team_id", f"team {scenario.team_id} is not in the catalog")
            return problems
        members = {m.router_name for m in team.members}
        revisions.extend(
            catalog.agents[m.assistant_id].active_revision for m in team.members if m.assistant_id in catalog.agents
        )
    procedures = {p.name for r in revisions for p in r.procedures}
    variables = {v.name for r in revisions for v in r.context_variables}
    tools = set(BUILTIN_TOOLS) | {ref.slug for r in revisions for ref in r.tool_refs if ref.slug}
    tools |= {catalog.tools[ref.id].slug for r in revisions for ref in r.tool_refs if ref.id in catalog.tools}
    expect = scenario.expect
    if expect.procedure not in (None, "none") and expect.procedure not in procedures:
        problem("expect.procedure", f"{expect.procedure!r} is not a procedure of the target ({_names(procedures)})")
    for index, tool in enumerate(expect.tools):
        if tool.name not in tools:
            problem(f"expect.tools[{index}].name", f"{tool.name!r} is not a tool the target has ({_names(tools)})")
    for name in expect.variables:
        if name not in variables:
            problem(f"expect.variables.{name}", f"not a context variable of the target ({_names(variables)})")
    for name in scenario.context_variables:
        if name not in variables:
            problem(f"context_variables.{name}", f"not a context variable of the target ({_names(variables)})")
    if expect.handoffs:
        if scenario.team_id is None:
            problem("expect.handoffs", "only a team call hands off between members")
        for index, member in enumerate(expect.handoffs):
            if members and member not in members:
                problem(f"expect.handoffs[{index}]", f"{member!r} is not a member of the team ({_names(members)})")
    return problems


def _names(names: Iterable[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed) if listed else "none"


Mode = Literal["text", "voice"]
