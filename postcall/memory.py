"""Memory extraction: which new durable facts about the caller a finished call revealed.

Structured output is asked for as a forced function call (`save_caller_facts(facts: string[])`) rather
than a provider-specific `response_format`: every livekit `llm.LLM` plugin supports tools and
`tool_choice`, so the same extractor works with OpenAI, OpenAI-compatible self-hosted servers and the
others. Servers that ignore `tool_choice` and answer in text are still understood when the text is the
same JSON (`{"facts": [...]}` or a bare list). Anything else is an error, never a guess.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from livekit.agents import llm
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from postcall.transcript_text import render_transcript
from records.outcome import SessionOutcome

TOOL_NAME = "save_caller_facts"
MAX_FACT_CHARS = 300

_INSTRUCTIONS = f"""\
You maintain the long-term memory a customer-service voice agent keeps about each caller.
Read the call transcript and list the durable facts about the caller that will help in future calls:
who they are (name, role, company), their preferences, the products or accounts they mention having,
open issues and their status, and commitments made to them.

Rules:
- Each fact is one short, self-contained sentence about the caller, in the third person
  ("The caller prefers to be contacted by email.").
- Only facts the caller stated or confirmed; nothing the agent merely suggested.
- Never record secrets or sensitive identifiers: passwords, PINs, security answers, full card, bank
  or national ID numbers.
- Leave out small talk and anything only relevant to this call.
- Do not repeat a known fact unless it changed; a changed fact is written in its new form.

Call {TOOL_NAME} exactly once, with an empty list when there is nothing new."""

_SCHEMA: dict[str, Any] = {
    "name": TOOL_NAME,
    "description": "Store new durable facts about the caller in long-term memory.",
    "parameters": {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "items": {"type": "string", "maxLength": MAX_FACT_CHARS},
                "description": "New or changed facts about the caller, one short sentence each.",
            }
        },
        "required": ["facts"],
        "additionalProperties": False,
    },
}


class MemoryExtractionError(RuntimeError):
    """The model's answer was not a list of facts."""


class MemoryExtractor(Protocol):
    async def extract(self, outcome: SessionOutcome, known_facts: Sequence[str]) -> list[str]:
        """New facts about `outcome.end_user_id`, given what is already known."""
        ...


class _Facts(BaseModel):
    model_config = ConfigDict(extra="ignore")
    facts: list[str] = Field(max_length=200)


async def _schema_only(raw_arguments: dict[str, object]) -> None:
    # The tool exists to carry the schema; its call is parsed, never executed.
    return None


_TOOL = llm.function_tool(_schema_only, raw_schema=_SCHEMA)


def _parse_facts(raw: str) -> list[str]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MemoryExtractionError(f"facts are not valid JSON: {exc.msg}") from None
    if isinstance(data, list):
        data = {"facts": data}
    try:
        return _Facts.model_validate(data).facts
    except ValidationError as exc:
        raise MemoryExtractionError(f"facts do not match the schema ({exc.error_count()} errors)") from None


def _strip_code_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


class LLMMemoryExtractor:
    """`llm_factory(outcome)` returns a fresh `llm.LLM` for this extraction (closed afterwards), or None when the
    call has no model to extract with (its agent has left the catalog): that extraction fails."""

    def __init__(
        self, llm_factory: Callable[[SessionOutcome], llm.LLM[Any] | None], *, max_new_facts: int = 20
    ) -> None:
        self._llm_factory = llm_factory
        self._max_new_facts = max_new_facts

    async def extract(self, outcome: SessionOutcome, known_facts: Sequence[str]) -> list[str]:
        chat_ctx = llm.ChatContext.empty()
        chat_ctx.add_message(role="system", content=_INSTRUCTIONS)
        known = "\n".join(f"- {fact}" for fact in known_facts) or "(none)"
        chat_ctx.add_message(
            role="user",
            content=f"Known facts about the caller:\n{known}\n\nTranscript:\n{render_transcript(outcome.transcript)}",
        )
        model = self._llm_factory(outcome)
        if model is None:
            raise MemoryExtractionError("no model for this call's agent or team")
        try:
            response = await model.chat(
                chat_ctx=chat_ctx,
                tools=[_TOOL],
                tool_choice={"type": "function", "function": {"name": TOOL_NAME}},
            ).collect()
        finally:
            await model.aclose()

        calls = [call for call in response.tool_calls if call.name == TOOL_NAME]
        if calls:
            facts = _parse_facts(calls[0].arguments or "{}")
        elif response.text.strip():
            facts = _parse_facts(_strip_code_fence(response.text))
        else:
            raise MemoryExtractionError(f"the model neither called {TOOL_NAME} nor answered with JSON")
        return [fact[:MAX_FACT_CHARS] for fact in facts if fact.strip()][: self._max_new_facts]
