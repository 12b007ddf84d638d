"""Check-time validation of what a call will render and route: a template error, an ambiguous procedure
choice or a team member nobody can reach is reported before any call."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from catalog.context_vars import SYSTEM_VARIABLES
from catalog.models import Agent, Revision, Team, TeamMember
from catalog.pipeline_config import VoicePipelineConfig
from procedures.router import NONE as ROUTER_NONE
from procedures.supervisor import normalize
from procedures.templates import TemplateError, undeclared_names

# Names every template may use besides the declared variables: set by the worker on every call.
_ALWAYS_DEFINED = frozenset(SYSTEM_VARIABLES) | {"current_time"}


@dataclass(frozen=True)
class TemplateProblem:
    field: str
    reason: str


def _check(source: str | None, field: str, declared: frozenset[str]) -> list[TemplateProblem]:
    if not source:
        return []
    try:
        missing = undeclared_names(source, declared | _ALWAYS_DEFINED)
    except TemplateError as exc:
        return [TemplateProblem(field, str(exc))]
    return [TemplateProblem(field, f"uses undeclared variable {name!r}") for name in missing]


def first_speaking_problems(
    pipeline: VoicePipelineConfig, declared: frozenset[str], prefix: str
) -> list[TemplateProblem]:
    first = pipeline.first_speaking
    return [
        *_check(first.text, f"{prefix}.first_speaking.text", declared),
        *_check(first.instructions, f"{prefix}.first_speaking.instructions", declared),
        *_check(first.ai_disclosure_text, f"{prefix}.first_speaking.ai_disclosure_text", declared),
    ]


def revision_template_problems(revision: Revision, prefix: str) -> list[TemplateProblem]:
    declared = frozenset(v.name for v in revision.context_variables)
    problems = [
        *_check(revision.system_prompt, f"{prefix}.system_prompt", declared),
        *first_speaking_problems(revision.pipeline, declared, f"{prefix}.pipeline"),
    ]
    for index, procedure in enumerate(revision.procedures):
        problems += _check(procedure.instructions, f"{prefix}.procedures[{index}].instructions", declared)
    return problems


def procedure_problems(revision: Revision, prefix: str) -> list[TemplateProblem]:
    """What makes the turn-1 choice ambiguous or impossible, beyond what the catalog loader refuses."""
    problems: list[TemplateProblem] = []
    seen: dict[str, int] = {}
    for index, procedure in enumerate(revision.procedures):
        field = f"{prefix}.procedures[{index}]"
        if procedure.name in seen:
            reason = f"duplicate procedure name {procedure.name!r} (also procedures[{seen[procedure.name]}])"
            problems.append(TemplateProblem(f"{field}.name", reason))
        seen.setdefault(procedure.name, index)
        if procedure.trigger_type == "auto" and procedure.name.strip().lower() == ROUTER_NONE:
            reason = f"{ROUTER_NONE!r} is reserved: the router answers it for 'no procedure'"
            problems.append(TemplateProblem(f"{field}.name", reason))
        for k_index, phrase in enumerate(procedure.keywords):
            if not normalize(phrase):
                problems.append(TemplateProblem(f"{field}.keywords[{k_index}]", "keyword has no words to match"))

    enabled = [(i, p) for i, p in enumerate(revision.procedures) if p.enabled]
    keyword = [(i, p) for i, p in enabled if p.trigger_type == "keyword"]
    for pos, (i, first) in enumerate(keyword):
        phrases = {normalize(k) for k in first.keywords} - {""}
        for j, second in keyword[pos + 1 :]:
            shared = sorted(phrases & {normalize(k) for k in second.keywords})
            if shared and first.priority == second.priority:
                reason = (
                    f"keyword {shared[0]!r} also triggers procedures[{i}] at the same priority; "
                    "the first declared would always win"
                )
                problems.append(TemplateProblem(f"{prefix}.procedures[{j}].priority", reason))
    always = [(i, p) for i, p in enabled if p.trigger_type == "always_on"]
    if always:
        top = max(p.priority for _, p in always)
        tied = [i for i, p in always if p.priority == top]
        if len(tied) > 1:
            reason = (
                f"several enabled always_on procedures share the top priority {top} "
                f"(procedures{tied}); the fallback is ambiguous"
            )
            problems.append(TemplateProblem(f"{prefix}.procedures[{tied[1]}].priority", reason))
    return problems


def revision_problems(revision: Revision, prefix: str) -> list[TemplateProblem]:
    """Everything check-able about a revision's prompts and procedures."""
    return [*revision_template_problems(revision, prefix), *procedure_problems(revision, prefix)]


def team_problems(team: Team, agents: Mapping[uuid.UUID, Agent], prefix: str = "") -> list[TemplateProblem]:
    """Members the team cannot hand the caller to. A disabled member is a choice, not a problem; a member
    whose agent is not in the catalog, or an unavailable initial or fallback member, is."""
    problems: list[TemplateProblem] = []
    dot = f"{prefix}." if prefix else ""

    def available(member: TeamMember) -> bool:
        agent = agents.get(member.assistant_id)
        return member.enabled and agent is not None and agent.enabled

    for index, member in enumerate(team.members):
        if member.assistant_id not in agents:
            reason = f"agent {member.assistant_id} is not in the catalog"
            problems.append(TemplateProblem(f"{dot}members[{index}].assistant_id", reason))
        if team.mode == "supervisor" and member.router_name.lower() == ROUTER_NONE:
            reason = f"{ROUTER_NONE!r} is reserved: the team router answers it for 'stay'"
            problems.append(TemplateProblem(f"{dot}members[{index}].router_name", reason))
    if not available(team.initial_member):
        reason = "the initial member or its agent is disabled or missing: every call would be refused"
        problems.append(TemplateProblem(f"{dot}initial_member_id", reason))
    fallback = team.fallback_member
    if fallback is not None and not available(fallback):
        reason = "the fallback member or its agent is disabled or missing: a failed handoff has nowhere to go"
        problems.append(TemplateProblem(f"{dot}fallback_member_id", reason))
    return problems
