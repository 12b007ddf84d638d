"""Typed context variables (the platform's `ContextVarSpec`) and the rules that coerce seeds to them.

Coercion rules (the contract the door and the worker share):

- `string`: str as is; int/float/bool are rendered with `str()` (`True` → "true"); anything else is refused.
- `int`: an int (not a bool); a float with no fractional part (`42.0` → 42); a string of an optional sign and
  digits after trimming (`" 42 "` → 42). `"4.2"`, `"4e2"`, `true` are refused.
- `float`: an int or float (not a bool, not NaN/inf); a string that parses as a finite decimal (`"2.5"`).
- `bool`: a bool; the ints 0/1; the strings (trimmed, case-insensitive) `true/yes/1/on` → true and
  `false/no/0/off` → false. Anything else (`"maybe"`, `2`) is refused.
- `enum`: a string equal to one of `enum_values`; failing that, one that matches exactly one value
  case-insensitively, normalised to the declared spelling (`"GOLD"` → "gold"). Ambiguous or absent → refused.

Bounds, checked after coercion: a `string` value has at most `max_length` characters; an `int` or `float` lies
within `minimum`..`maximum`. A spec that declares none gets `ValueLimits` (settings `CONTEXT_VAR_MAX_*`):
1024 characters, integers within ±(2**53 - 1) (exact in every JSON parser, JavaScript's included), floats
within ±1e15. The platform's `ContextVarSpec` has no bound fields; ours are optional extensions, so a
platform document still loads. Every seed travels inside the browser's token, so unbounded values would be
a denial of service on the whole call path.

`system` variables (session id, agent id, session type, current time, end user id) are set by the worker;
a seed for one is refused. Seeds apply once at bootstrap; team calls ignore them (platform contract).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

VarType = Literal["string", "int", "float", "bool", "enum"]
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_INT_RE = re.compile(r"^[+-]?\d+$")

# Variables the worker sets itself on every call; a catalog may declare them (to use them in templates)
# but only with source `system`, and nobody may seed them.
SYSTEM_VARIABLES: dict[str, VarType] = {
    "session_id": "string",
    "session_type": "string",
    "agent_id": "string",
    "team_id": "string",
    "current_time": "string",
    "end_user_id": "string",
}


class ContextVarSpec(BaseModel):
    """A declared context variable; field names follow the platform's `ContextVarSpec`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: VarType
    source: Literal["system", "derived"] = "derived"
    description: str | None = None
    enum_values: tuple[str, ...] | None = None
    reask_cap: int | None = Field(None, ge=0)
    # Extensions (not in the platform schema): per-variable bounds overriding `ValueLimits`.
    max_length: int | None = Field(None, ge=1)
    minimum: float | None = None
    maximum: float | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not an identifier ([A-Za-z_]\\w*)")
        return value

    @model_validator(mode="after")
    def _enum_needs_values(self) -> ContextVarSpec:
        if self.type == "enum" and not self.enum_values:
            raise ValueError(f"enum variable {self.name!r} needs enum_values")
        if self.type != "enum" and self.enum_values:
            raise ValueError(f"enum_values is only for type enum, not {self.type}")
        if self.name in SYSTEM_VARIABLES and self.source != "system":
            raise ValueError(f"{self.name!r} is set by the worker; declare it with source: system")
        if self.max_length is not None and self.type != "string":
            raise ValueError(f"max_length is only for type string, not {self.type}")
        if (self.minimum is not None or self.maximum is not None) and self.type not in ("int", "float"):
            raise ValueError(f"minimum/maximum are only for types int and float, not {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        return self


@dataclass(frozen=True)
class ValueLimits:
    """Bounds for values whose spec declares none (see the module docstring)."""

    max_string_chars: int = 1024
    max_abs_int: int = 2**53 - 1
    max_abs_float: float = 1e15


DEFAULT_LIMITS = ValueLimits()


class ContextVarError(ValueError):
    """A seed that cannot be applied. `name` is the variable; `reason` says why, without echoing secrets."""

    def __init__(self, name: str, reason: str, kind: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.kind = kind  # "unknown" | "system" | "coercion" | "range"


def _shown(value: Any) -> str:
    # A bounded preview: the value may be megabytes, and `repr` of a huge int is refused by Python itself.
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {len(str(abs(value)))} digits" if value.bit_length() < 10_000 else "a huge integer"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57]) + "..."
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_bounds(spec: ContextVarSpec, value: str | int | float | bool, limits: ValueLimits) -> None:
    def refuse(why: str) -> ContextVarError:
        return ContextVarError(spec.name, why, "range")

    if spec.type == "string" and isinstance(value, str):
        most = spec.max_length if spec.max_length is not None else limits.max_string_chars
        if len(value) > most:
            raise refuse(f"is {len(value)} characters long; at most {most} characters are allowed")
    elif spec.type in ("int", "float") and isinstance(value, (int, float)):
        cap = limits.max_abs_int if spec.type == "int" else limits.max_abs_float
        low = spec.minimum if spec.minimum is not None else -cap
        high = spec.maximum if spec.maximum is not None else cap
        if not low <= value <= high:
            bounds = f"{int(low)} and {int(high)}" if spec.type == "int" else f"{low:g} and {high:g}"
            raise refuse(f"{_shown(value)} is out of range: {spec.type} values must lie between {bounds}")


def coerce(spec: ContextVarSpec, value: Any, limits: ValueLimits = DEFAULT_LIMITS) -> str | int | float | bool:
    """`value` as the declared type of `spec` within its bounds, or `ContextVarError` (kind coercion | range)."""
    result = _coerce_type(spec, value)
    _check_bounds(spec, result, limits)
    return result


def _coerce_type(spec: ContextVarSpec, value: Any) -> str | int | float | bool:
    def refuse(why: str) -> ContextVarError:
        return ContextVarError(spec.name, f"cannot coerce {_shown(value)} to {spec.type}: {why}", "coercion")

    if value is None:
        raise refuse("a value is required")
    match spec.type:
        case "string":
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, (str, int, float)):
                return str(value)
            raise refuse("expected text")
        case "int":
            if isinstance(value, bool):
                raise refuse("booleans are not integers")
            if isinstance(value, int):
                return value
            if isinstance(value, float):
                if value.is_integer():
                    return int(value)
                raise refuse("has a fractional part")
            if isinstance(value, str) and _INT_RE.match(value.strip()):
                digits = value.strip()
                # int() of thousands of digits is quadratic and Python refuses past 4300: say "out of range".
                if len(digits.lstrip("+-")) > 40:
                    raise ContextVarError(spec.name, f"{_shown(value)} is out of range for int", "range")
                return int(digits)
            raise refuse("expected a whole number")
        case "float":
            if isinstance(value, bool):
                raise refuse("booleans are not numbers")
            if isinstance(value, (int, float)):
                result = float(value)
            elif isinstance(value, str):
                try:
                    result = float(value.strip())
                except ValueError:
                    raise refuse("expected a number") from None
            else:
                raise refuse("expected a number")
            if not math.isfinite(result):
                raise refuse("must be finite")
            return result
        case "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in _TRUE:
                    return True
                if lowered in _FALSE:
                    return False
            raise refuse("expected true/false, yes/no, 1/0 or on/off")
        case "enum":
            allowed = spec.enum_values or ()
            if isinstance(value, str):
                if value in allowed:
                    return value
                folded = [v for v in allowed if v.casefold() == value.strip().casefold()]
                if len(folded) == 1:
                    return folded[0]
            raise refuse(f"expected one of {list(allowed)}")
    raise refuse("unknown type")  # unreachable: VarType is closed


def coerce_seeds(
    specs: list[ContextVarSpec] | tuple[ContextVarSpec, ...],
    seeds: dict[str, Any],
    limits: ValueLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Seeds checked against the declared variables: every problem is collected, then raised as a group."""
    by_name = {spec.name: spec for spec in specs}
    values: dict[str, Any] = {}
    errors: list[ContextVarError] = []
    for name, raw in seeds.items():
        spec = by_name.get(name)
        if spec is None:
            errors.append(ContextVarError(name, "is not a declared context variable", "unknown"))
            continue
        if spec.source == "system" or name in SYSTEM_VARIABLES:
            errors.append(
                ContextVarError(name, "is a system variable set by the worker; it cannot be seeded", "system")
            )
            continue
        try:
            values[name] = coerce(spec, raw, limits)
        except ContextVarError as exc:
            errors.append(exc)
    if errors:
        raise ContextVarErrors(errors)
    return values


class ContextVarErrors(ValueError):
    """Every seed problem of one request, so a caller fixes them all at once."""

    def __init__(self, errors: list[ContextVarError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
