"""A deterministic agent LLM for the example catalog's scenarios (catalog/examples/scenarios), for `FakeLLM`.

It answers by request shape, like a sensible model would for these agents (and, like one, it calls only tools the
request offers): the routers pick by the caller's
words, each procedure's instructions get the reply (or tool call) the procedure asks for. It only decides what
an LLM would decide; everything else (routing, tools, variables, handoffs, the end of the call) is the real
code's. Plus the caller and judge doubles: a persona that plays a short refund call and a judge whose verdicts
are scripted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from livekit.agents import llm

from tests.doubles.fake_llm import Reply


def _last_user(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            return item.text_content or ""
    return ""


def _instructions(chat_ctx: llm.ChatContext) -> str:
    return " ".join(m.text_content or "" for m in chat_ctx.messages() if m.role in ("system", "developer"))


def _tool_outputs(chat_ctx: llm.ChatContext) -> list[str]:
    """Tool outputs since the caller last spoke (one turn's)."""
    out: list[str] = []
    for item in reversed(chat_ctx.items):
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            break
        if isinstance(item, llm.FunctionCallOutput):
            out.append(item.name)
    return out


def _enum(tool: llm.Tool) -> list[str]:
    schema: dict[str, Any] = {}
    if isinstance(tool, llm.RawFunctionTool):
        schema = tool.info.raw_schema.get("parameters", {})
    for prop in schema.get("properties", {}).values():
        if "enum" in prop:
            return [str(v) for v in prop["enum"]]
    return []


def _tool_id(tool: llm.Tool) -> str:
    return str(getattr(tool, "id", ""))


def agent_brain(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
    names = [_tool_id(t) for t in tools]
    said = _last_user(chat_ctx).lower()
    if names and names[0].startswith("choose_"):
        options = _enum(tools[0])
        wanted = (
            "refund_request"
            if "refund" in said
            else "pricing_question"
            if "cost" in said or "price" in said
            else "sales"
            if "plan" in said
            else "general_help"
        )
        return Reply(tool_calls=[(names[0], {"name": wanted if wanted in options else "none"})])
    instructions = _instructions(chat_ctx)
    done = _tool_outputs(chat_ctx)
    digits = re.findall(r"\d+", said)
    if "transfer_to_member" in names and ("plan" in said or "cost" in said) and "sales assistant" not in instructions:
        return Reply(tool_calls=[("transfer_to_member", {"member": "sales", "reason": "pricing question"})])
    if "Handle a refund" in instructions:
        if digits:
            return Reply(text="Thank you. Refunds reach your original payment method within five business days.")
        return Reply(text="I can help with that refund. What is the order number?")
    if "track an order" in instructions:
        if "order_lookup" in done:
            return Reply(text="I could not get that order's status right now, and I will not guess it.")
        if digits and "order_lookup" in names:
            return Reply(tool_calls=[("order_lookup", {"order_number": digits[0]})])
        return Reply(text="Sure, what is the order number?")
    if "Offer a demo" in instructions:
        if "record_variable" in done:
            return Reply(text="Great, I have twelve seats down. Which day suits you for the demo this week?")
        if "record_variable" not in names:
            return Reply(text="A demo this week works. Which day suits you?")
        if "seats" in said and digits:
            return Reply(tool_calls=[("record_variable", {"name": "seats", "value": digits[0]})])
        if "twelve" in said:
            return Reply(tool_calls=[("record_variable", {"name": "seats", "value": "12"})])
        return Reply(text="Thursday at ten it is. You will get the demo invitation by email.")
    if "sales assistant" in instructions:
        return Reply(text="Pro is sixty dollars per seat per month, and Starter is twenty.")
    if "call me back" in said or "call back" in said:
        if "record_variable" in done or "record_variable" not in names:
            return Reply(text="Of course, someone will call you back later today.")
        return Reply(tool_calls=[("record_variable", {"name": "wants_callback", "value": "true"})])
    return Reply(text="Happy to help. What can I do for you?")


def persona_lines(*lines: str) -> Iterator[Reply]:
    """A persona caller that says `lines` in order, then hangs up."""
    for line in lines:
        yield Reply(text=line)
    while True:
        yield Reply(tool_calls=[("hang_up", {})])


def scripted(replies: Iterator[Reply]):  # type: ignore[no-untyped-def]  # a FakeLLM script function
    def script(chat_ctx: llm.ChatContext, tools: list[llm.Tool]) -> Reply:
        return next(replies)

    return script


def verdicts(*pairs: tuple[str, str]) -> Iterator[Reply]:
    """A judge answering `(verdict, reasoning)` in turn, then repeating the last."""
    last = pairs[-1]
    for verdict, reasoning in pairs:
        yield Reply(tool_calls=[("submit_verdict", {"verdict": verdict, "reasoning": reasoning})])
    while True:
        yield Reply(tool_calls=[("submit_verdict", {"verdict": last[0], "reasoning": last[1]})])
