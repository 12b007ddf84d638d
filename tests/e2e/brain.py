"""What the OpenAI double answers in the real-server suite: one responder for every chat request of a call.

Deterministic by request shape, so concurrent calls and speculative replies (the supervisor opens reply
streams while its router runs) all get a sensible answer:
- the procedure router (`choose_procedure` tool) picks `procedure`;
- the team member who has `transfer_to_member` and hears a buying question transfers to sales;
- post-call summary and memory requests get a summary and no facts;
- anything else is the agent's reply: a short sentence that names the procedure it was instructed with, so a
  test can tell from the caller's side (the transcript) which procedure answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.doubles.openai_server import Reply, ToolCall

ANSWER_TTFT_MS = 200.0
ANSWER_TOKEN_MS = 15.0


@dataclass
class Brain:
    procedure: str = "refund_request"
    transfer_words: tuple[str, ...] = ("price", "plan", "cost", "demo")
    answer: str = "Refunds reach your card within five business days."
    # what the sales agent (its system prompt says "sales assistant") answers, so a handoff shows in the transcript
    sales_answer: str = "Pro is sixty dollars per seat per month."

    def __call__(self, body: dict[str, Any]) -> Reply:
        tools = [t.get("function", {}).get("name") for t in body.get("tools") or []]
        messages = body.get("messages") or []
        system = " ".join(_text(m) for m in messages if m.get("role") in ("system", "developer"))
        last_user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
        if "choose_procedure" in tools:
            options = _enum(body, "choose_procedure")
            choice = self.procedure if self.procedure in options else options[0]
            return Reply(tool_calls=[ToolCall("choose_procedure", {"name": choice})], ttft_ms=50)
        if "choose_team_member" in tools:
            return Reply(tool_calls=[ToolCall("choose_team_member", {"name": "none"})], ttft_ms=50)
        if "Transcript of the call" in last_user:
            if "facts" in system.lower() and "summar" not in system.lower():
                return Reply(text="[]", ttft_ms=20)
            return Reply(text="The caller asked for a refund and was told it takes five business days.", ttft_ms=20)
        sales = "sales assistant" in system
        if "transfer_to_member" in tools and not sales and any(w in last_user.lower() for w in self.transfer_words):
            return Reply(
                tool_calls=[ToolCall("transfer_to_member", {"member": "sales", "reason": "buying question"})],
                ttft_ms=50,
            )
        answer = self.sales_answer if sales else self.answer
        return Reply(text=answer, ttft_ms=ANSWER_TTFT_MS, token_interval_ms=ANSWER_TOKEN_MS)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _enum(body: dict[str, Any], tool: str) -> list[str]:
    """The option names a router tool offers (its one parameter is an enum)."""
    for spec in body.get("tools") or []:
        function = spec.get("function", {})
        if function.get("name") == tool:
            for prop in function.get("parameters", {}).get("properties", {}).values():
                if "enum" in prop:
                    return [str(v) for v in prop["enum"]]
    return ["none"]
