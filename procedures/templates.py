"""Rendering catalog text (system prompts, greetings, procedure instructions) over the context variables.

Templates run in Jinja2's sandbox: catalog authors are trusted less than code, and a template must not reach
attributes or call methods. An undefined name raises instead of rendering a blank, and `undeclared_names()` lets
`voice-worker check` report such a name before any call is made.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """A template that cannot be rendered; the message names the problem, never the variable values."""


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    # autoescape off: the output is speech and prompts, not HTML.
    # A declared variable that has no value yet is None; it renders as nothing rather than the word "None".
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        finalize=lambda value: "" if value is None else value,
    )


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> Template:
    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from None


def precompile(source: str) -> bool:
    """Compile `source` into the cache now (a worker's setup function), so the first call that renders it does
    not pay for it; False for a template with a syntax error (validation reports those)."""
    try:
        _compile(source)
    except TemplateError:
        return False
    return True


def render(source: str, variables: Mapping[str, Any]) -> str:
    """`source` rendered with `variables`; `TemplateError` on a syntax error or an undefined name."""
    template = _compile(source)
    try:
        return template.render(dict(variables)).strip()
    except UndefinedError as exc:
        raise TemplateError(f"template uses an undefined variable: {exc.message}") from None
    except Exception as exc:  # sandbox SecurityError, type errors in expressions
        raise TemplateError(f"template failed to render: {type(exc).__name__}: {exc}") from None


def undeclared_names(source: str, declared: Iterable[str]) -> list[str]:
    """Names the template reads that are not declared (sorted); raises `TemplateError` on bad syntax."""
    try:
        parsed = _environment().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    return sorted(meta.find_undeclared_variables(parsed) - set(declared))
