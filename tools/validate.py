"""Check-time validation of platform tools and of the revisions that attach them (`voice-worker check`).

What the models cannot see on their own: a template that does not parse or reads a name that is neither one of
the tool's variables nor a context variable of the revision using it; `{{env.NAME}}` outside a secure value, or
for a name the worker will not read; a `secure: true` value that is not from the environment (a literal secret
in the catalog); response paths that are not paths; output bindings to variables that do not exist or paths the
result will not have; a tool variable or a result alias named like one of the revision's context variables;
procedures granting tools the revision does not attach.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from catalog.context_vars import SYSTEM_VARIABLES
from catalog.models import BUILTIN_TOOLS, Agent, Revision, Team
from catalog.tools import InputArgConfig, ToolDefinition, find_tool
from tools.arguments import ArgumentError, coerce_argument
from tools.mapping import parse_path
from tools.templating import ENV, TemplateError, body_strings, env_names, names_used, template_fields

# Function names the worker's own tools use; a platform tool may not take one.
RESERVED_NAMES = frozenset({*BUILTIN_TOOLS, "transfer_to_member", "choose_procedure"})
_ALWAYS_DEFINED = frozenset(SYSTEM_VARIABLES) | {"current_time"}


@dataclass(frozen=True)
class ToolProblem:
    field: str
    reason: str


def tool_problems(tool: ToolDefinition, *, env_prefix: str, sip_trunk_configured: bool) -> list[ToolProblem]:
    """Problems of a tool file on its own (fields relative to the file)."""
    problems: list[ToolProblem] = []
    if tool.slug in RESERVED_NAMES:
        problems.append(ToolProblem("slug", f"{tool.slug!r} is the name of one of the worker's own tools"))
    if tool.transfer_target is not None and tool.transfer_target.mode == "warm" and not sip_trunk_configured:
        reason = "a warm transfer dials the destination through an outbound SIP trunk: set SIP_OUTBOUND_TRUNK_ID"
        problems.append(ToolProblem("transfer_target.mode", reason))
    config = tool.configuration
    if config is None:
        return problems
    for field, source, secure in template_fields(config):
        try:
            used = names_used(source)
            env, misused = env_names(source)
        except TemplateError as exc:
            problems.append(ToolProblem(field, str(exc)))
            continue
        if ENV in used and not secure:
            where = "a header or query parameter marked secure: true"
            problems.append(ToolProblem(field, f"{{{{env.NAME}}}} is only allowed in {where}"))
        elif misused:
            problems.append(ToolProblem(field, "use env only as env.NAME"))
        for name in sorted(env):
            if not name.startswith(env_prefix) or name == env_prefix:
                reason = f"env.{name} cannot be read: tool secrets must be named {env_prefix}* (TOOL_ENV_PREFIX)"
                problems.append(ToolProblem(field, reason))
        if secure and not env:
            reason = "a secure value must come from the environment ({{env.NAME}}), not be written in the catalog"
            problems.append(ToolProblem(field, reason))
    if config.body is not None:
        for where, text in body_strings(config.body, "configuration.body"):
            if where.endswith("(key)") and ("{{" in text or "{%" in text):
                problems.append(ToolProblem(where.removesuffix("(key)"), "body keys are literal (no templates)"))
    for index, mapping in enumerate(tool.response_schema.field_mappings if tool.response_schema else ()):
        try:
            parse_path(mapping.path)
        except ValueError as exc:
            problems.append(ToolProblem(f"response_schema.field_mappings[{index}].path", str(exc)))
    problems += _defaults_problems(tool, tool.input_defaults, "input_defaults")
    return problems


def _defaults_problems(
    tool: ToolDefinition, defaults: Mapping[str, InputArgConfig] | None, field: str
) -> list[ToolProblem]:
    problems: list[ToolProblem] = []
    declared = {v.name for v in tool.variables}
    for name, preset in (defaults or {}).items():
        if name not in declared:
            problems.append(ToolProblem(f"{field}.{name}", f"tool {tool.slug} has no variable {name!r}"))
            continue
        variable = next(v for v in tool.variables if v.name == name)
        try:
            coerce_argument(variable, preset.value)
        except ArgumentError as exc:
            problems.append(ToolProblem(f"{field}.{name}.value", f"does not fit the variable's type ({exc})"))
    return problems


def revision_tool_problems(
    revision: Revision,
    prefix: str,
    tools: Mapping[uuid.UUID, ToolDefinition],
    *,
    agent: Agent,
    teams: Mapping[uuid.UUID, Team],
) -> list[ToolProblem]:
    """Problems of a revision's `tool_refs` and of the tools its procedures grant (fields in the agent's file)."""
    problems: list[ToolProblem] = []
    context = {v.name: v for v in revision.context_variables}
    attached: dict[str, int] = {}
    for index, ref in enumerate(revision.tool_refs):
        field = f"{prefix}.tool_refs[{index}]"
        if ref.kind != "api":
            problems.append(ToolProblem(f"{field}.kind", f"{ref.kind!r} tools are not supported by this worker"))
            continue
        tool = find_tool(tools, ref)
        if tool is None:
            continue  # reported by the loader
        if tool.slug in attached:
            problems.append(
                ToolProblem(field, f"tool {tool.slug} is attached twice (also tool_refs[{attached[tool.slug]}])")
            )
            continue
        attached[tool.slug] = index
        problems += _attachment_problems(tool, ref.output_bindings or {}, context, field)
        for p in _defaults_problems(tool, ref.input_defaults, f"{field}.input_defaults"):
            problems.append(p)
        target = tool.transfer_target
        if target is not None and target.web_member is not None:
            for team in teams.values():
                if any(m.assistant_id == agent.id for m in team.members) and not any(
                    m.router_name == target.web_member for m in team.members
                ):
                    reason = f"tool {tool.slug}'s web_member {target.web_member!r} is not a member of team {team.name}"
                    problems.append(ToolProblem(field, reason))
    for p_index, procedure in enumerate(revision.procedures):
        for t_index, name in enumerate(procedure.tools):
            if name not in BUILTIN_TOOLS and name not in attached:
                reason = f"{name!r} is neither a built-in tool nor the slug of a tool in this revision's tool_refs"
                problems.append(ToolProblem(f"{prefix}.procedures[{p_index}].tools[{t_index}]", reason))
    return problems


def _attachment_problems(
    tool: ToolDefinition, bindings: Mapping[str, str], context: Mapping[str, object], field: str
) -> list[ToolProblem]:
    problems: list[ToolProblem] = []
    variables = {v.name for v in tool.variables}
    for name in sorted(variables & set(context)):
        reason = (
            f"tool {tool.slug}'s variable {name!r} clashes with the context variable {name!r}: "
            "templates could not tell them apart (the context variable would win)"
        )
        problems.append(ToolProblem(field, reason))
    known = variables | set(context) | _ALWAYS_DEFINED | {ENV}
    for where, source, _secure in template_fields(tool.configuration) if tool.configuration else ():
        try:
            unknown = sorted(names_used(source) - known)
        except TemplateError:
            continue  # reported on the tool's own file
        for name in unknown:
            reason = (
                f"tool {tool.slug}'s {where} uses {name!r}, which is neither one of its variables "
                "nor a context variable of this revision"
            )
            problems.append(ToolProblem(field, reason))
    mapped = [m.key for m in tool.response_schema.field_mappings] if tool.response_schema else []
    for mapping_key in sorted(set(mapped) & set(context)):
        if bindings.get(mapping_key) != mapping_key:
            reason = (
                f"tool {tool.slug}'s result alias {mapping_key!r} clashes with the context variable of that name "
                f"without setting it: bind it (output_bindings: {{{mapping_key}: {mapping_key}}}) or rename the alias"
            )
            problems.append(ToolProblem(field, reason))
    for name, path in bindings.items():
        where = f"{field}.output_bindings.{name}"
        if tool.tool_type != "api_call":
            problems.append(ToolProblem(where, "only api_call tools have a result to bind"))
            continue
        if name not in context:
            problems.append(ToolProblem(where, f"{name!r} is not a context variable of this revision"))
        elif name in SYSTEM_VARIABLES:
            problems.append(ToolProblem(where, f"{name!r} is a system variable set by the worker"))
        try:
            first = parse_path(path)[0]
        except ValueError as exc:
            problems.append(ToolProblem(where, str(exc)))
            continue
        if mapped and not any(key == path or key == str(first) or path.startswith(f"{key}.") for key in mapped):
            reason = f"{path!r} is not in tool {tool.slug}'s result (its field_mappings give: {', '.join(mapped)})"
            problems.append(ToolProblem(where, reason))
    return problems
