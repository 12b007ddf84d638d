"""A scenario's expectations against what its call showed: one `Check` each, with a detail that says what the call
did instead, so a failure reads as a reason ("procedure: expected refund_request, the call chose general_help")."""

from __future__ import annotations

import re
from typing import Any

from simulations.results import Check, Observed, ToolCall
from simulations.scenario import Expectations, ToolExpectation


def evaluate(expect: Expectations, observed: Observed) -> list[Check]:
    checks: list[Check] = []
    if expect.procedure is not None:
        checks.append(_procedure(expect.procedure, observed))
    checks += [_tool(t, observed) for t in expect.tools]
    for name, matcher in expect.variables.items():
        given = name in observed.variables and observed.variables[name] is not None
        value = observed.variables.get(name)
        expectation = f"variable {name} {matcher.describe()}"
        if "variables" in observed.unobservable:
            checks.append(_unobservable(expectation, observed.unobservable["variables"]))
            continue
        checks.append(
            Check(
                expectation=expectation,
                passed=matcher.matches(value, given=given),
                detail=f"recorded {value!r}" if given else "not recorded",
            )
        )
    if expect.handoffs is not None:
        wanted, seen = list(expect.handoffs), observed.handoffs
        checks.append(
            Check(
                expectation=f"handoffs {' -> '.join(wanted) or 'none'}",
                passed=seen == wanted,
                detail=f"the call moved {' -> '.join(seen)}" if seen else "the call never handed off",
            )
        )
    agent_lines = [line.text for line in observed.transcript if line.role == "assistant"]
    for pattern in expect.said:
        hit = _first_match(pattern, agent_lines)
        checks.append(
            Check(
                expectation=f"said /{pattern}/",
                passed=hit is not None,
                detail=f"said: {hit!r}" if hit is not None else f"no agent line matches (of {len(agent_lines)})",
            )
        )
    for pattern in expect.never_said:
        hit = _first_match(pattern, agent_lines)
        checks.append(
            Check(
                expectation=f"never said /{pattern}/",
                passed=hit is None,
                detail=f"said: {hit!r}" if hit is not None else "no agent line matches",
            )
        )
    if expect.end_reason is not None:
        checks.append(
            Check(
                expectation=f"end reason {expect.end_reason}",
                passed=observed.end_reason == expect.end_reason,
                detail=f"the call ended as {observed.end_reason or 'unknown'}",
            )
        )
    if expect.max_turns is not None:
        checks.append(
            Check(
                expectation=f"at most {expect.max_turns} caller turns",
                passed=observed.caller_turns <= expect.max_turns,
                detail=f"{observed.caller_turns} caller turns",
            )
        )
    if expect.latency_budget_ms is not None:
        checks.append(_latency(expect.latency_budget_ms, observed))
    return checks


def _procedure(wanted: str, observed: Observed) -> Check:
    chose = observed.procedure or "none"
    why = f" ({observed.procedure_reason})" if observed.procedure_reason else ""
    return Check(expectation=f"procedure {wanted}", passed=chose == wanted, detail=f"the call chose {chose}{why}")


def _unobservable(expectation: str, why: str) -> Check:
    """An expectation this run cannot see never passes: it fails and says why."""
    return Check(expectation=expectation, passed=False, detail=f"not checkable in this run: {why}")


def _tool(expected: ToolExpectation, observed: Observed) -> Check:
    calls = [c for c in observed.tool_calls if c.name == expected.name]
    args = ", ".join(f"{k} {m.describe()}" for k, m in expected.arguments.items())
    label = f"{expected.name}({args})" if args else expected.name
    if "tools" in observed.unobservable:
        return _unobservable(
            f"tool {label} {'called' if expected.called else 'not called'}", observed.unobservable["tools"]
        )
    if expected.arguments and not observed.tool_arguments_seen:
        matching = calls
        caveat = " (arguments not observable in this mode: name only)"
    else:
        matching = [c for c in calls if _arguments_match(expected, c)]
        caveat = ""
    if expected.called:
        if matching:
            detail = f"called {len(matching)}x{caveat}"
        elif calls:
            detail = "called, but with " + "; ".join(_arguments_text(c.arguments) for c in calls)
        else:
            others = sorted({c.name for c in observed.tool_calls})
            detail = f"never called (tools called: {', '.join(others) or 'none'})"
        return Check(expectation=f"tool {label} called", passed=bool(matching), detail=detail)
    detail = f"called with {_arguments_text(matching[0].arguments)}" if matching else f"not called{caveat}"
    return Check(expectation=f"tool {label} not called", passed=not matching, detail=detail)


def _arguments_match(expected: ToolExpectation, call: ToolCall) -> bool:
    return all(
        matcher.matches(call.arguments.get(name), given=name in call.arguments)
        for name, matcher in expected.arguments.items()
    )


def _arguments_text(arguments: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")"


def _first_match(pattern: str, lines: list[str]) -> str | None:
    compiled = re.compile(pattern)
    return next((line for line in lines if compiled.search(line)), None)


def _latency(budget_ms: float, observed: Observed) -> Check:
    measured = [t for t in observed.latencies if t.latency_ms is not None]
    over = [t for t in measured if t.latency_ms is not None and t.latency_ms > budget_ms]
    if not measured:
        return Check(
            expectation=f"every turn within {budget_ms:.0f} ms", passed=False, detail="no turn latency was measured"
        )
    worst = max(t.latency_ms or 0.0 for t in measured)
    detail = (
        "over budget: " + ", ".join(f"turn {t.turn} {t.latency_ms:.0f} ms" for t in over)
        if over
        else f"worst turn {worst:.0f} ms of {len(measured)}"
    )
    return Check(expectation=f"every turn within {budget_ms:.0f} ms", passed=not over, detail=detail)
