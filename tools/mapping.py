"""From a tool's response to what the model sees and what the call remembers.

`field_mappings` pick values out of the response by dotted path (`data.order.status`), with array indices
(`items[0].sku`, `items[-1]`, or `items.0.sku`); each lands under its `alias` (or its path). A path that is
not there maps to None: the model sees the key with no value, rather than a made-up one.

`output_bindings` (on the revision's `ToolRef`) copy values of the result into context variables, mechanically,
coerced to each variable's declared type. A missing or null value clears the variable (it becomes None), so a
lookup that found nothing never leaves the previous lookup's answer standing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from catalog.context_vars import ContextVarError
from catalog.tools import ResponseFieldMapping
from catalog.variables import CallVariables

log = logging.getLogger("voice_worker.tools")

_TOKEN = re.compile(r"\[(-?\d+)\]|([^.\[\]]+)")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def parse_path(path: str) -> list[str | int]:
    """`a.b[0].c` → ["a", "b", 0, "c"]; ValueError for a path that is not well formed."""
    parts: list[str | int] = []
    position = 0
    expect_name = True
    while position < len(path):
        if path[position] == "." and not expect_name and parts:
            position += 1
            expect_name = True
            continue
        match = _TOKEN.match(path, position)
        if match is None or (match.group(2) is not None and not expect_name):
            raise ValueError(f"{path!r} is not a dotted path (name.name[0].name)")
        if match.group(1) is not None:
            if not parts:
                raise ValueError(f"{path!r} starts with an index")
            parts.append(int(match.group(1)))
        else:
            name = match.group(2)
            parts.append(int(name) if name.lstrip("-").isdigit() else name)
        position = match.end()
        expect_name = False
    if not parts or expect_name:
        raise ValueError(f"{path!r} is not a dotted path (name.name[0].name)")
    return parts


def lookup(data: Any, path: str) -> Any:
    """The value at `path`, or MISSING."""
    current = data
    for part in parse_path(path):
        if isinstance(part, int) and isinstance(current, list):
            if -len(current) <= part < len(current):
                current = current[part]
                continue
            return MISSING
        if isinstance(current, Mapping):
            key = str(part)
            if key in current:
                current = current[key]
                continue
        return MISSING
    return current


def map_fields(data: Any, mappings: Sequence[ResponseFieldMapping]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for mapping in mappings:
        value = lookup(data, mapping.path)
        result[mapping.key] = None if value is MISSING else value
    return result


@dataclass(frozen=True)
class Binding:
    variable: str
    outcome: str  # "set" | "cleared" | "refused"


def bind_outputs(result: Any, bindings: Mapping[str, str], variables: CallVariables) -> list[Binding]:
    """Write the bound values into `variables`; a value that does not fit its variable is left out (logged)."""
    done: list[Binding] = []
    for name, path in bindings.items():
        # a mapped key without an alias is the whole dotted path: it is one key of the result, not a path in it
        value = result[path] if isinstance(result, Mapping) and path in result else lookup(result, path)
        if value is MISSING or value is None:
            try:
                variables.clear(name)
            except ContextVarError as exc:
                log.warning("output binding %s not applied: %s", name, exc.reason)
                done.append(Binding(name, "refused"))
                continue
            done.append(Binding(name, "cleared"))
            continue
        try:
            variables.record(name, value)
        except ContextVarError as exc:
            # the reason may quote the value; only the kind of problem is logged
            log.warning("output binding %s not applied: %s", name, exc.kind)
            done.append(Binding(name, "refused"))
            continue
        done.append(Binding(name, "set"))
    return done
