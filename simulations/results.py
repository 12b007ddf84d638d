"""One results model for both modes: what a simulated call showed (`Observed`) and what held (`ScenarioResult`).

Text mode reads the observation from the session it ran; voice mode from what the caller heard and the call's
session record. The expectations (simulations/expectations.py), the reports (simulations/report.py) and the
command's summary read only these types, so a scenario reads the same whichever way it was run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from simulations.scenario import ScenarioFile

Verdict = Literal["pass", "fail", "maybe", "error"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Line(_Model):
    role: Literal["user", "assistant"]
    text: str


class ToolCall(_Model):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    is_error: bool = False


class TurnLatency(_Model):
    """One agent reply after a caller turn: `latency_ms` from the end of the caller's turn to the agent's reply
    (text mode: the first reply message; voice mode: the first agent audio the caller heard)."""

    turn: int
    latency_ms: float | None


class Observed(_Model):
    transcript: list[Line] = Field(default_factory=list)
    # the turn-1 procedure's name; None when the call chose none (or never reached turn 1)
    procedure: str | None = None
    procedure_reason: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # tool arguments were seen (text mode, and voice mode through the agent's `voice_worker.simulation` attribute)
    tool_arguments_seen: bool = True
    variables: dict[str, Any] = Field(default_factory=dict)
    handoffs: list[str] = Field(default_factory=list)
    end_reason: str | None = None
    caller_turns: int = 0
    latencies: list[TurnLatency] = Field(default_factory=list)
    # voice mode: the call as the caller's STT heard it (the transcript above is the session record's)
    heard: list[Line] = Field(default_factory=list)
    # what this run could not observe ("tools", "variables") and why: their expectations fail with that reason
    unobservable: dict[str, str] = Field(default_factory=dict)


class Check(_Model):
    """One expectation: what was expected, whether it held, and in what the call differed."""

    expectation: str
    passed: bool
    detail: str


class JudgeRun(_Model):
    verdict: Verdict
    reasoning: str


class JudgeResult(_Model):
    item: str
    runs: list[JudgeRun]
    required: int

    @property
    def passes(self) -> int:
        return sum(1 for r in self.runs if r.verdict == "pass")

    @property
    def passed(self) -> bool:
        return self.passes >= self.required

    @property
    def spread(self) -> str:
        """How the runs split, e.g. `2 pass / 1 fail of 3`: a flaky item shows as a split, not a coin toss."""
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.verdict] = counts.get(run.verdict, 0) + 1
        parts = [f"{counts[v]} {v}" for v in ("pass", "fail", "maybe", "error") if v in counts]
        return f"{' / '.join(parts)} of {len(self.runs)} (needs {self.required})"


class ScenarioResult(_Model):
    scenario: str
    file: str
    mode: Literal["text", "voice"]
    target: str
    session_id: str | None = None
    duration_s: float = 0.0
    latency_budget_ms: float | None = None
    observed: Observed = Field(default_factory=Observed)
    checks: list[Check] = Field(default_factory=list)
    judges: list[JudgeResult] = Field(default_factory=list)
    # the scenario could not run to its end (refused dispatch, provider failure, timeout): it fails with this
    error: str | None = None

    @classmethod
    def begin(cls, file: ScenarioFile, mode: Literal["text", "voice"]) -> ScenarioResult:
        """The empty result of a scenario about to run in `mode`."""
        scenario = file.scenario
        return cls(
            scenario=scenario.name,
            file=str(file.path),
            mode=mode,
            target=f"agent {scenario.agent_id}" if scenario.agent_id else f"team {scenario.team_id}",
            latency_budget_ms=scenario.expect.latency_budget_ms,
        )

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks) and all(j.passed for j in self.judges)

    @property
    def failures(self) -> list[str]:
        out = [f"error: {self.error}"] if self.error else []
        out += [f"{c.expectation}: {c.detail}" for c in self.checks if not c.passed]
        out += [f"rubric {j.item!r}: {j.spread}" for j in self.judges if not j.passed]
        return out
