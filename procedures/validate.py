"""Check-time validation of everything a call will render: a template error is reported before any call."""

from __future__ import annotations

from dataclasses import dataclass

from catalog.context_vars import SYSTEM_VARIABLES
from catalog.models import Revision
from catalog.pipeline_config import VoicePipelineConfig
from procedures.templates import TemplateError, undeclared_names

# Names every template may use besides the declared variables: set by the worker on every call.
_ALWAYS_DEFINED = frozenset(SYSTEM_VARIABLES) | {"current_time"}


@dataclass(frozen=True)
class TemplateProblem:
    field: str
    reason: str


def _check(source: str | None, field: str, declared: frozenset[str]) -> list[TemplateProblem]:
    if not source:
        return []
    try:
        missing = undeclared_names(source, declared | _ALWAYS_DEFINED)
    except TemplateError as exc:
        return [TemplateProblem(field, str(exc))]
    return [TemplateProblem(field, f"uses undeclared variable {name!r}") for name in missing]


def first_speaking_problems(pipeline: VoicePipelineConfig, declared: frozenset[str], prefix: str) -> list[TemplateProblem]:
    first = pipeline.first_speaking
    return [
        *_check(first.text, f"{prefix}.first_speaking.text", declared),
        *_check(first.instructions, f"{prefix}.first_speaking.instructions", declared),
        *_check(first.ai_disclosure_text, f"{prefix}.first_speaking.ai_disclosure_text", declared),
    ]


def revision_template_problems(revision: Revision, prefix: str) -> list[TemplateProblem]:
    declared = frozenset(v.name for v in revision.context_variables)
    problems = [
        *_check(revision.system_prompt, f"{prefix}.system_prompt", declared),
        *first_speaking_problems(revision.pipeline, declared, f"{prefix}.pipeline"),
    ]
    for index, procedure in enumerate(revision.procedures):
        problems += _check(procedure.instructions, f"{prefix}.procedures[{index}].instructions", declared)
    return problems
