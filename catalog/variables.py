"""The context variables of one call: declared specs, bootstrap values, and later writes.

Bootstrap order (later wins): every declared name starts as None, then the revision's `variable_defaults`,
then the dispatch seeds (single-agent calls only; coerced, unknown/system names refused), then the system
values the worker sets (session id, agent id, session type, current time, end user id; each defined, None when
the call has no value for it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from catalog.context_vars import SYSTEM_VARIABLES, ContextVarError, ContextVarSpec, coerce, coerce_seeds


@dataclass
class CallVariables:
    specs: dict[str, ContextVarSpec]
    values: dict[str, Any]
    system: dict[str, Any] = field(default_factory=dict)
    # Writes made during the call by the record_variable tool, in order, for the session record.
    writes: list[tuple[str, Any]] = field(default_factory=list)

    @classmethod
    def bootstrap(
        cls,
        specs: tuple[ContextVarSpec, ...],
        *,
        defaults: Mapping[str, Any],
        seeds: Mapping[str, Any] | None,
        system: Mapping[str, Any],
    ) -> CallVariables:
        by_name = {s.name: s for s in specs}
        values: dict[str, Any] = {name: None for name in by_name}
        for name, raw in defaults.items():
            values[name] = coerce(by_name[name], raw)
        if seeds:
            values.update(coerce_seeds(specs, dict(seeds)))
        # every system variable is defined for templates, None where this call has no value (a call without an end
        # user, a console session): a template may test any of them without failing the call
        known = {name: system.get(name) for name in SYSTEM_VARIABLES if name != "current_time"}
        return cls(specs=by_name, values=values, system=known)

    def template_values(self) -> dict[str, Any]:
        """What templates see: declared variables, then system values (which cannot be overridden)."""
        merged = dict(self.values)
        merged.update(self.system)
        merged["current_time"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return merged

    def record(self, name: str, raw: Any) -> Any:
        """A value collected during the call; only declared `derived` variables may be written."""
        spec = self.specs.get(name)
        if spec is None:
            raise ContextVarError(name, "is not a declared context variable", "unknown")
        if spec.source == "system" or name in SYSTEM_VARIABLES:
            raise ContextVarError(name, "is a system variable set by the worker", "system")
        value = coerce(spec, raw)
        self.values[name] = value
        self.writes.append((name, value))
        return value

    def clear(self, name: str) -> None:
        """A derived variable back to no value (None): a tool's lookup found nothing for it."""
        spec = self.specs.get(name)
        if spec is None:
            raise ContextVarError(name, "is not a declared context variable", "unknown")
        if spec.source == "system" or name in SYSTEM_VARIABLES:
            raise ContextVarError(name, "is a system variable set by the worker", "system")
        self.values[name] = None
        self.writes.append((name, None))
