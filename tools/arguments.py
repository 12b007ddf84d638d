"""A tool's arguments: the JSON schema the model sees, and the checked values a call runs with.

Parameters come from the tool's `variables` (type, required, description). Operator values (`input_defaults`
on the tool, then on the revision's `ToolRef`, which wins) are either `default` (the parameter becomes
optional and its description says what is used when it is left out) or `pinned` (the parameter is not shown
at all and the operator's value is always used: the model cannot override it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from catalog.tools import InputArgConfig, ToolDefinition, VariableDefinition

_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
# Longer strings are refused: a value goes into a URL or a request body, and the model has no reason to send more.
MAX_STRING_CHARS = 2048


class ArgumentError(ValueError):
    """Arguments the tool cannot run with; the message is for the model (it names the argument, not secrets)."""


def operator_values(
    tool: ToolDefinition, ref_defaults: Mapping[str, InputArgConfig] | None
) -> dict[str, InputArgConfig]:
    return {**(tool.input_defaults or {}), **(ref_defaults or {})}


def parameters_schema(tool: ToolDefinition, operator: Mapping[str, InputArgConfig]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for variable in tool.variables:
        preset = operator.get(variable.name)
        if preset is not None and preset.type == "pinned":
            continue
        spec: dict[str, Any] = {"type": _JSON_TYPES[variable.type]}
        description = variable.description or ""
        if preset is not None:
            description = f"{description} (default: {preset.value!r})".strip()
        if description:
            spec["description"] = description
        properties[variable.name] = spec
        if variable.required and preset is None:
            required.append(variable.name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def coerce_argument(variable: VariableDefinition, value: Any) -> Any:
    kind = variable.type
    if kind == "str":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            text = str(value)
            if len(text) > MAX_STRING_CHARS:
                raise ArgumentError(f"{variable.name}: at most {MAX_STRING_CHARS} characters")
            return text
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value.strip()) <= 20:
            return int(value.strip())
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    expected = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false"}[kind]
    raise ArgumentError(f"{variable.name}: expected {expected}")


def resolve_arguments(
    tool: ToolDefinition, operator: Mapping[str, InputArgConfig], raw: Mapping[str, Any]
) -> dict[str, Any]:
    """The values a call runs with: pinned values, then the model's, then defaults; every declared variable is
    present (None when optional and absent). `ArgumentError` lists every problem at once."""
    declared = {v.name: v for v in tool.variables}
    problems: list[str] = []
    unknown = sorted(set(raw) - set(declared))
    if unknown:
        problems.append(f"unknown argument(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, variable in declared.items():
        preset = operator.get(name)
        if preset is not None and preset.type == "pinned":
            candidate = preset.value
        elif raw.get(name) is not None:
            candidate = raw[name]
        elif preset is not None:
            candidate = preset.value
        else:
            if variable.required:
                problems.append(f"{name}: required")
            values[name] = None
            continue
        try:
            values[name] = coerce_argument(variable, candidate)
        except ArgumentError as exc:
            problems.append(str(exc))
    if problems:
        raise ArgumentError("; ".join(problems))
    return values
