"""Rubric items judged by an LLM, each `runs` times, through livekit-agents' judge primitives (`livekit.agents.evals`).

A free-text item is a `Judge` subclass that asks for a verdict through a `submit_verdict` tool, the way livekit's
own judges do; a named item (`judge: tool_use`) is livekit's built-in judge of that name. A judge is an LLM, so
an item may run k times with a stated threshold: the result keeps every run's verdict and reasoning, and the
report shows the spread instead of one lucky (or unlucky) answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal, Protocol

from livekit.agents import llm
from livekit.agents.evals import (
    Judge,
    JudgmentResult,
    accuracy_judge,
    coherence_judge,
    conciseness_judge,
    handoff_judge,
    relevancy_judge,
    safety_judge,
    task_completion_judge,
    tool_use_judge,
)
from livekit.agents.llm import function_tool
from livekit.agents.llm import utils as llm_utils

from simulations.results import JudgeResult, JudgeRun, Line
from simulations.scenario import RubricItem


class Evaluates(Protocol):
    async def evaluate(
        self, *, chat_ctx: llm.ChatContext, reference: llm.ChatContext | None = None, llm: llm.LLM[Any] | None = None
    ) -> JudgmentResult: ...


_BUILTIN: dict[str, Callable[[llm.LLM[Any] | None], Evaluates]] = {
    "task_completion": task_completion_judge,
    "tool_use": tool_use_judge,
    "accuracy": accuracy_judge,
    "safety": safety_judge,
    "relevancy": relevancy_judge,
    "coherence": coherence_judge,
    "conciseness": conciseness_judge,
    "handoff": handoff_judge,
}

_SYSTEM = (
    "You evaluate a phone conversation between a caller (user) and a voice agent (assistant) against one "
    "criterion. Read the whole conversation, then call submit_verdict once: 'pass' if the criterion holds, "
    "'fail' if it does not, 'maybe' if the conversation does not show it. Keep the reasoning to two sentences."
)


class RubricJudge(Judge):
    """One free-text criterion."""

    def __init__(self, criteria: str) -> None:
        super().__init__(name="rubric")
        self.criteria = criteria

    async def evaluate(
        self, *, chat_ctx: llm.ChatContext, reference: llm.ChatContext | None = None, llm: llm.LLM[Any] | None = None
    ) -> JudgmentResult:
        if llm is None:
            raise ValueError("a rubric judge needs an LLM")
        verdicts: list[tuple[Literal["pass", "fail", "maybe"], str]] = []

        @function_tool
        async def submit_verdict(verdict: Literal["pass", "fail", "maybe"], reasoning: str) -> str:
            """Submit the verdict on the criterion.

            Args:
                verdict: 'pass', 'fail' or 'maybe'.
                reasoning: why, briefly.
            """
            verdicts.append((verdict, reasoning))
            return "recorded"

        prompt = _prompt(_SYSTEM, f"Criterion: {self.criteria}\n\nConversation:\n{_render(chat_ctx)}")
        response = await llm.chat(chat_ctx=prompt, tools=[submit_verdict], tool_choice="required").collect()
        for call in response.tool_calls:
            if call.name == "submit_verdict":
                args, kwargs = llm_utils.prepare_function_arguments(fnc=submit_verdict, json_arguments=call.arguments)
                await submit_verdict(*args, **kwargs)
        if not verdicts:
            raise ValueError("the judge gave no verdict (no submit_verdict call)")
        verdict, reasoning = verdicts[0]
        return JudgmentResult(verdict=verdict, reasoning=reasoning, instructions=self.criteria)


def _prompt(system: str, user: str) -> llm.ChatContext:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content=system)
    ctx.add_message(role="user", content=user)
    return ctx


def _render(chat_ctx: llm.ChatContext) -> str:
    parts: list[str] = []
    for item in chat_ctx.items:
        if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant") and item.text_content:
            parts.append(f"{'caller' if item.role == 'user' else 'agent'}: {item.text_content}")
        elif isinstance(item, llm.FunctionCall):
            parts.append(f"[agent called {item.name}({item.arguments})]")
        elif isinstance(item, llm.FunctionCallOutput):
            parts.append(f"[{item.name} returned: {item.output}]")
    return "\n".join(parts)


def transcript_context(transcript: list[Line]) -> llm.ChatContext:
    """A chat context from a transcript alone (voice mode judges what was said, as heard)."""
    ctx = llm.ChatContext()
    for line in transcript:
        ctx.add_message(role=line.role, content=line.text)
    return ctx


def judge_for(item: RubricItem) -> Evaluates:
    if item.criteria is not None:
        return RubricJudge(item.criteria)
    assert item.judge is not None  # the schema requires one of the two
    return _BUILTIN[item.judge](None)  # the LLM comes with each evaluate() call


async def judge_item(item: RubricItem, chat_ctx: llm.ChatContext, model: llm.LLM[Any]) -> JudgeResult:
    """Run `item` k times, concurrently; a run that raises counts as an `error` verdict (never as a pass)."""
    judge = judge_for(item)

    async def once() -> JudgeRun:
        try:
            result = await judge.evaluate(chat_ctx=chat_ctx, llm=model)
        except Exception as exc:  # a judge that cannot answer is a failed run, with the reason shown
            return JudgeRun(verdict="error", reasoning=f"{type(exc).__name__}: {exc}")
        return JudgeRun(verdict=result.verdict, reasoning=result.reasoning)

    runs = await asyncio.gather(*(once() for _ in range(item.runs)))
    return JudgeResult(item=item.label, runs=list(runs), required=item.required)
