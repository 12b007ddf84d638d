"""Deciding whether a verified dispatch can be served, and with what: the catalog side of admission.

Run twice per call: in the request handler (main process, before a job process is spent: refuse early with
a reason) and in the entrypoint (cheap; the catalog may have changed between offer and assignment).
Everything that would otherwise fail in the middle of a call is checked here: the target exists and is
enabled, its pipeline config is buildable with the keys this worker has, and the seeds coerce.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from catalog.context_vars import ContextVarErrors, ValueLimits, coerce_seeds
from catalog.loader import Catalog
from catalog.models import Agent, Revision, Team
from catalog.pipeline_config import VoicePipelineConfig
from contract.dispatch import DispatchClaims, DispatchRejected


class AdmissionReason(StrEnum):
    UNKNOWN_AGENT = "unknown_agent"
    DISABLED_AGENT = "disabled_agent"
    UNKNOWN_TEAM = "unknown_team"
    DISABLED_TEAM = "disabled_team"
    INVALID_PIPELINE = "invalid_pipeline"
    INVALID_CONTEXT_VARIABLES = "invalid_context_variables"


@dataclass(frozen=True)
class Admission:
    """What the call will run: the agent (for a team: the initial member) and the pipeline that drives it."""

    claims: DispatchClaims
    agent: Agent
    revision: Revision
    pipeline: VoicePipelineConfig
    team: Team | None
    # Seeds after coercion; empty for team calls, which ignore seeds by the platform's contract.
    seeds: dict[str, Any]

    @property
    def agent_id(self) -> uuid.UUID:
        return self.agent.id


class AdmissionSettings(Protocol):
    """What admission reads from the process settings (contract.settings.SharedSettings has it all)."""

    context_var_max_string_chars: int
    context_var_max_abs_int: int
    context_var_max_abs_float: float

    def provider_api_key(self, env_name: str) -> str | None: ...


PipelineCheck = Callable[[VoicePipelineConfig, AdmissionSettings, str], list[str]]


def _default_pipeline_check(config: VoicePipelineConfig, settings: AdmissionSettings, where: str) -> list[str]:
    from pipelines.validate import pipeline_problems

    return [f"{p.field}: {p.reason}" for p in pipeline_problems(config, settings, where=where)]


def llm_only_pipeline_check(config: VoicePipelineConfig, settings: AdmissionSettings, where: str) -> list[str]:
    """For text-only sessions (console): only the model chain has to be usable."""
    return [p for p in _default_pipeline_check(config, settings, where) if p.startswith(f"{where}.model_chain")]


def admit(
    claims: DispatchClaims,
    catalog: Catalog,
    settings: AdmissionSettings,
    *,
    pipeline_check: PipelineCheck = _default_pipeline_check,
) -> Admission:
    """An `Admission`, or `DispatchRejected` naming why this worker cannot serve the dispatch."""
    team: Team | None = None
    if claims.team_id is not None:
        team = catalog.teams.get(claims.team_id)
        if team is None:
            raise DispatchRejected(AdmissionReason.UNKNOWN_TEAM, f"team {claims.team_id} is not in the catalog")
        if not team.enabled:
            raise DispatchRejected(AdmissionReason.DISABLED_TEAM, f"team {team.id} ({team.name}) is disabled")
        member = team.initial_member
        agent = catalog.agents.get(member.assistant_id)
        if agent is None or not agent.enabled or not member.enabled:
            raise DispatchRejected(
                AdmissionReason.DISABLED_AGENT,
                f"team {team.id}: initial member {member.router_name} ({member.assistant_id}) is missing or disabled",
            )
        pipeline, label = team.pipeline, f"team {team.id}"
        seeds: dict[str, Any] = {}
    else:
        agent_or_none = catalog.agents.get(claims.target_id)
        if agent_or_none is None:
            raise DispatchRejected(AdmissionReason.UNKNOWN_AGENT, f"agent {claims.target_id} is not in the catalog")
        agent = agent_or_none
        if not agent.enabled:
            raise DispatchRejected(AdmissionReason.DISABLED_AGENT, f"agent {agent.id} ({agent.name}) is disabled")
        pipeline, label = agent.active_revision.pipeline, f"agent {agent.id}"
        seeds = dict(claims.context_variables)

    problems = pipeline_check(pipeline, settings, "pipeline")
    if problems:
        raise DispatchRejected(AdmissionReason.INVALID_PIPELINE, f"{label}: " + "; ".join(problems))

    revision = agent.active_revision
    if seeds:
        try:
            # The door's bounds, so a value the door let through is never refused here (and vice versa).
            limits = ValueLimits(
                settings.context_var_max_string_chars,
                settings.context_var_max_abs_int,
                settings.context_var_max_abs_float,
            )
            seeds = coerce_seeds(revision.context_variables, seeds, limits)
        except ContextVarErrors as exc:
            raise DispatchRejected(AdmissionReason.INVALID_CONTEXT_VARIABLES, str(exc)) from None
    return Admission(claims=claims, agent=agent, revision=revision, pipeline=pipeline, team=team, seeds=seeds)
