"""What an agent, a revision, a procedure, a team and its members are.

Field names follow the platform's schemas (`AgentRevisionCreate`, `WorkflowRevisionCreate` +
`WorkflowAttachmentResponse` for procedures, `TeamRevisionCreate` / `TeamMemberCreate`) so that an operator
who knows that API recognises ours. Models are frozen: a call pins the revision that was active when it
started, and nothing mutates it underneath.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from catalog.context_vars import ContextVarSpec
from catalog.pipeline_config import ModelChainEntry, VoicePipelineConfig
from catalog.tools import SLUG, ToolRef

TriggerType = Literal["auto", "keyword", "always_on"]
# The worker's own tools; a procedure may also grant the revision's platform tools by their slug.
BUILTIN_TOOLS = ("end_call", "handoff", "record_variable")
ToolName = str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Procedure(_Strict):
    """A workflow attached to a revision: when it applies, how the agent behaves under it, what it may do."""

    id: uuid.UUID
    name: str = Field(min_length=1, max_length=120)
    description: str = Field(min_length=1, description="When this procedure applies; shown to the router.")
    enabled: bool = True
    priority: int = Field(0, description="Higher wins when several keyword procedures match.")
    trigger_type: TriggerType = "auto"
    keywords: tuple[str, ...] = Field((), description="Phrases for trigger_type keyword (case-insensitive).")
    instructions: str = Field(min_length=1, description="Sandboxed Jinja2 template over the context variables.")
    tools: tuple[ToolName, ...] = Field(
        ("end_call",), description="Built-in tools (end_call, handoff, record_variable) and tool_refs slugs."
    )
    router_model_settings: ModelChainEntry | None = None

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in BUILTIN_TOOLS and not SLUG.match(name):
                raise ValueError(f"{name!r} is neither a built-in tool ({', '.join(BUILTIN_TOOLS)}) nor a tool slug")
        return value

    @model_validator(mode="after")
    def _keywords_match_trigger(self) -> Procedure:
        if self.trigger_type == "keyword" and not self.keywords:
            raise ValueError("trigger_type keyword needs at least one entry in keywords")
        if self.trigger_type != "keyword" and self.keywords:
            raise ValueError(f"keywords are only used with trigger_type keyword, not {self.trigger_type}")
        return self


class Revision(_Strict):
    id: uuid.UUID
    name: str | None = None
    system_prompt: str = Field(min_length=1, description="Sandboxed Jinja2 template over the context variables.")
    pipeline: VoicePipelineConfig = VoicePipelineConfig()
    context_variables: tuple[ContextVarSpec, ...] = ()
    variable_defaults: dict[str, str | int | float | bool] = Field(default_factory=dict)
    procedures: tuple[Procedure, ...] = ()
    tool_refs: tuple[ToolRef, ...] = Field((), description="Platform tools attached to this revision.")
    router_model_settings: ModelChainEntry | None = Field(
        None, description="Router model for turn-1 procedure choice; defaults to the pipeline's primary LLM."
    )
    router_timeout_ms: int = Field(400, ge=50, le=10_000)
    summary_instructions: str | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Revision:
        names = [v.name for v in self.context_variables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"context variable declared twice: {', '.join(dupes)}")
        ids = [p.id for p in self.procedures]
        if len(ids) != len(set(ids)):
            raise ValueError("procedure ids must be unique within a revision")
        unknown = sorted(set(self.variable_defaults) - set(names))
        if unknown:
            raise ValueError(f"variable_defaults names undeclared variables: {', '.join(unknown)}")
        return self

    def enabled_procedures(self) -> tuple[Procedure, ...]:
        return tuple(p for p in self.procedures if p.enabled)


class Agent(_Strict):
    id: uuid.UUID
    name: str = Field(min_length=1, max_length=120)
    enabled: bool = True
    active_revision_id: uuid.UUID
    revisions: tuple[Revision, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _active_revision_exists(self) -> Agent:
        if not any(r.id == self.active_revision_id for r in self.revisions):
            raise ValueError(f"active_revision_id {self.active_revision_id} is not among this agent's revisions")
        return self

    @property
    def active_revision(self) -> Revision:
        return next(r for r in self.revisions if r.id == self.active_revision_id)


class TeamMember(_Strict):
    """A member of a team, as the platform's `TeamMemberCreate` (`assistant_id` is the agent)."""

    id: uuid.UUID
    assistant_id: uuid.UUID
    router_name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][\w-]*$")
    router_description: str = Field(min_length=1)
    enabled: bool = True
    position: int = 0
    examples: tuple[str, ...] = ()


class Team(_Strict):
    id: uuid.UUID
    name: str = Field(min_length=1, max_length=120)
    enabled: bool = True
    mode: Literal["supervisor", "swarm"] = "supervisor"
    purpose: str | None = None
    members: tuple[TeamMember, ...] = Field(min_length=1)
    initial_member_id: uuid.UUID
    fallback_member_id: uuid.UUID | None = None
    pipeline: VoicePipelineConfig = VoicePipelineConfig()
    router_model_settings: ModelChainEntry | None = None
    summary_instructions: str | None = None

    @model_validator(mode="after")
    def _members_consistent(self) -> Team:
        ids = {m.id for m in self.members}
        if self.initial_member_id not in ids:
            raise ValueError(f"initial_member_id {self.initial_member_id} is not a member of this team")
        if self.fallback_member_id is not None and self.fallback_member_id not in ids:
            raise ValueError(f"fallback_member_id {self.fallback_member_id} is not a member of this team")
        names = [m.router_name for m in self.members]
        if len(names) != len(set(names)):
            raise ValueError("member router_name values must be unique within a team")
        return self

    def member(self, member_id: uuid.UUID) -> TeamMember:
        return next(m for m in self.members if m.id == member_id)

    @property
    def initial_member(self) -> TeamMember:
        return self.member(self.initial_member_id)

    @property
    def fallback_member(self) -> TeamMember | None:
        return self.member(self.fallback_member_id) if self.fallback_member_id else None
