"""`voice-worker tool-call`: run one api_call tool once, outside a call.

The tool comes from a file (`--tool-file`) or from an agent's active revision (`--agent-id` + `--tool SLUG`,
with that attachment's input_defaults and output_bindings). Templates read `--args` (the tool's arguments, as
the model would send them) and `--var` (context variables; for an agent they are coerced to the revision's
declared types, on top of its variable_defaults). The request it made goes to stderr with secure values masked,
the result the model would see to stdout as JSON; any refusal or failure is one line and a non-zero exit. The
egress policy, caps and `{{env.NAME}}` secrets are the worker's own (TOOL_* settings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from catalog.context_vars import ContextVarError, ContextVarErrors
from catalog.loader import load_catalog, load_tool_file
from catalog.tools import ToolDefinition, ToolRef, find_tool
from catalog.variables import CallVariables
from cli.common import EXIT_OK, EXIT_PROBLEMS, EXIT_REFUSED, UsageError, fail, load_cli_settings, parse_vars, uuid_arg
from tools.api_call import ApiCaller, ApiToolResult, run_api_tool
from tools.config import ToolConfig
from tools.mapping import MISSING, lookup


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tool-call",
        help="run one api_call tool once: the request (secrets masked) on stderr, the result as JSON on stdout",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--tool-file", help="a tool's YAML file (kind: tool)")
    source.add_argument("--agent-id", help="an agent UUID from the catalog (with --tool)")
    p.add_argument("--tool", metavar="SLUG", help="the slug of one of the agent's tool_refs")
    p.add_argument("--args", default="{}", metavar="JSON", help="the tool's arguments, a JSON object")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a context variable")
    p.add_argument("--catalog", help="catalog directory (default: CATALOG_PATH)")


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--args is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise UsageError("--args must be a JSON object")
    return value


def _from_agent(
    args: argparse.Namespace, catalog_path: Path, seeds: dict[str, str]
) -> tuple[ToolDefinition, ToolRef, dict[str, Any]]:
    if not args.tool:
        raise UsageError("--agent-id needs --tool SLUG")
    agent_id = uuid_arg(args.agent_id, "--agent-id")
    catalog = load_catalog(catalog_path)
    agent = catalog.agents.get(agent_id) if agent_id is not None else None
    if agent is None:
        raise UsageError(f"agent {args.agent_id} is not in the catalog ({catalog_path})")
    revision = agent.active_revision
    attached = [(ref, find_tool(catalog.tools, ref)) for ref in revision.tool_refs]
    found = next(((ref, tool) for ref, tool in attached if tool is not None and tool.slug == args.tool), None)
    if found is None:
        slugs = ", ".join(t.slug for _, t in attached if t is not None) or "none"
        raise UsageError(f"agent {agent.name} has no tool {args.tool!r} (its tools: {slugs})")
    try:
        variables = CallVariables.bootstrap(
            revision.context_variables, defaults=revision.variable_defaults, seeds=seeds, system={}
        )
    except (ContextVarErrors, ContextVarError) as exc:
        raise UsageError(f"--var: {exc}") from None
    return found[1], found[0], variables.template_values()


def _bindings_preview(result: ApiToolResult, ref: ToolRef | None) -> str | None:
    if ref is None or not ref.output_bindings or result.status != "ok":
        return None
    parts = []
    for name, path in ref.output_bindings.items():
        data = result.result
        value = data[path] if isinstance(data, dict) and path in data else lookup(data, path)
        parts.append(f"{name} = {'(cleared)' if value is MISSING or value is None else json.dumps(value)}")
    return "output_bindings: " + "; ".join(parts)


def tool_call(args: argparse.Namespace) -> int:
    settings = load_cli_settings(args)
    arguments = _arguments(args.args)
    try:
        seeds = parse_vars(args.var)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ref: ToolRef | None = None
    if args.tool_file:
        tool, problems = load_tool_file(Path(args.tool_file))
        if tool is None:
            return fail("; ".join(str(p) for p in problems) or f"{args.tool_file}: not a tool", EXIT_PROBLEMS)
        context: dict[str, Any] = dict(seeds)
    else:
        tool, ref, context = _from_agent(args, settings.catalog_path, seeds)
    if tool.tool_type != "api_call":
        return fail(
            f"tool {tool.slug} is a {tool.tool_type} tool; only api_call tools run outside a call", EXIT_REFUSED
        )
    config = ToolConfig.from_settings(settings)

    async def run() -> ApiToolResult:
        caller = ApiCaller(config.policy, config.limits)
        try:
            return await run_api_tool(
                tool,
                arguments,
                context,
                caller=caller,
                secrets=config.secrets,
                ref_defaults=ref.input_defaults if ref is not None else None,
            )
        finally:
            await caller.aclose()

    result = asyncio.run(run())
    if result.request is not None:
        print("request: " + json.dumps(result.request, ensure_ascii=False), file=sys.stderr)
    if result.http_status is not None:
        attempts = f" after {result.attempts} attempts" if result.attempts > 1 else ""
        print(f"answer: HTTP {result.http_status} in {result.elapsed_ms:.0f} ms{attempts}", file=sys.stderr)
    if result.status != "ok":
        return fail(f"tool {tool.slug}: {result.status}: {result.error}", EXIT_REFUSED)
    preview = _bindings_preview(result, ref)
    if preview is not None:
        print(preview, file=sys.stderr)
    print(json.dumps(result.result, indent=2, ensure_ascii=False, default=str))
    return EXIT_OK
