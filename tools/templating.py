"""Filling an api_call tool's request from its arguments and the call's context variables.

Templates (`{{name}}`) run in Jinja2's immutable sandbox, and every value is escaped for where it lands:

- url: each value is percent-encoded as a whole (`/`, `?`, `#`, `&` included), so a value is one path segment or
  one query value and can never add a segment, a parameter or a fragment; `.` and `..` are refused outright.
  Scheme and host are literal (the catalog refuses templates before the path).
- headers: rendered as text; a value that would contain a line break or another control character is refused
  (no header injection).
- query_params: rendered as text and handed to httpx, which encodes them.
- body: built as JSON, never by pasting text: a string that is exactly one expression (`"{{ quantity }}"`)
  becomes the value itself with its type (a number stays a number), any other string is rendered as text into
  a JSON string. Keys are literal.

Secrets: `{{env.NAME}}` reads the process environment, only in a header or query parameter marked `secure: true`
and only for names that start with the configured prefix, so a catalog cannot read the worker's own secrets.
Every secure value rendered is kept in `RenderedRequest.secrets`, which `masked()` and `scrub()` use so that no
secret reaches a log line, the command line's output, the model or the session record.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined, UndefinedError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from catalog.tools import APICallConfiguration

ENV = "env"
MASK = "***"
# A body string that is one expression and nothing else: its value keeps its JSON type.
_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)+)\}\}\s*$", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Secrets shorter than this are not scrubbed from responses: masking "1" everywhere would garble every number.
_MIN_SCRUB_CHARS = 4


class RenderError(ValueError):
    """A request that cannot be built. The message names the field and the problem, never a value."""


class TemplateError(ValueError):
    """A template that does not parse (check time)."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return str(int(value)) if abs(value) < 2**53 else str(value)
    return str(value)


def _url_value(value: Any) -> str:
    text = _text(value)
    if text in (".", ".."):
        raise RenderError("a URL value may not be '.' or '..'")
    return quote(text, safe="")


def _environment(finalize: Any) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=finalize
    )


@functools.lru_cache(maxsize=1)
def _text_env() -> ImmutableSandboxedEnvironment:
    return _environment(_text)


@functools.lru_cache(maxsize=1)
def _url_env() -> ImmutableSandboxedEnvironment:
    return _environment(_url_value)


@functools.lru_cache(maxsize=1024)
def _compile(source: str, position: str) -> Template:
    env = _url_env() if position == "url" else _text_env()
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from None


# --- check time ---------------------------------------------------------------------------------------------


def parse(source: str) -> nodes.Template:
    try:
        return _text_env().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from None


def names_used(source: str) -> set[str]:
    """Top-level names the template reads (`env` included); `TemplateError` on bad syntax."""
    return set(meta.find_undeclared_variables(parse(source)))


def env_names(source: str) -> tuple[set[str], bool]:
    """(environment variable names read as `env.NAME` / `env["NAME"]`, whether `env` is used any other way)."""
    tree = parse(source)
    found: set[str] = set()
    direct = 0
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == ENV:
            found.add(node.attr)
            direct += 1
        elif isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == ENV:
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                found.add(node.arg.value)
                direct += 1
    total = sum(1 for n in tree.find_all(nodes.Name) if n.name == ENV)
    return found, total > direct


def body_strings(body: Any, where: str = "body") -> Iterator[tuple[str, str]]:
    """(field path, string) for every string leaf of a JSON body, and for every key (which must be literal)."""
    if isinstance(body, str):
        yield where, body
    elif isinstance(body, Mapping):
        for key, value in body.items():
            yield f"{where}.{key}(key)", str(key)
            yield from body_strings(value, f"{where}.{key}")
    elif isinstance(body, list):
        for index, value in enumerate(body):
            yield from body_strings(value, f"{where}[{index}]")


def template_fields(config: APICallConfiguration) -> Iterator[tuple[str, str, bool]]:
    """(field, template, secure) for every templated place of a request."""
    yield "configuration.url", config.url, False
    for i, header in enumerate(config.headers):
        yield f"configuration.headers[{i}].value", header.value, header.secure
    for i, param in enumerate(config.query_params):
        yield f"configuration.query_params[{i}].value", param.value, param.secure
    if config.body is not None:
        for where, text in body_strings(config.body, "configuration.body"):
            if not where.endswith("(key)"):
                yield where, text, False


# --- call time ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedRequest:
    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    json_body: Any = None
    has_body: bool = False
    secure_params: frozenset[str] = frozenset()
    secure_headers: frozenset[str] = frozenset()
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        """`text` with every secret rendered for this request replaced by the mask."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= _MIN_SCRUB_CHARS:
                text = text.replace(secret, MASK)
        return text

    def scrub_value(self, value: Any) -> Any:
        """A JSON value with the secrets masked in every string (keys included)."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {self.scrub(str(k)): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub_value(v) for v in value]
        return value

    def masked(self) -> dict[str, Any]:
        """What the request was, with secure values masked: for logs and the command line."""
        params = [(k, MASK if k in self.secure_params else v) for k, v in self.params]
        query = "&".join(f"{quote(k, safe='')}={v if v == MASK else quote(v, safe='')}" for k, v in params)
        url = self.scrub(self.url) + (("&" if "?" in self.url else "?") + query if query else "")
        described: dict[str, Any] = {
            "method": self.method,
            "url": url,
            "headers": {k: MASK if k.lower() in self.secure_headers else self.scrub(v) for k, v in self.headers},
        }
        if self.has_body:
            described["body"] = self.scrub_value(self.json_body)
        return described


class SecretSource:
    """Where `{{env.NAME}}` values come from: the environment, restricted to names with `prefix`."""

    def __init__(self, environ: Mapping[str, str], prefix: str) -> None:
        self._environ = environ
        self.prefix = prefix

    def allowed(self, name: str) -> bool:
        return bool(self.prefix) and name.startswith(self.prefix) and len(name) > len(self.prefix)

    def values_for(self, source: str, where: str) -> dict[str, str]:
        names, misused = env_names(source)
        if misused:
            raise RenderError(f"{where}: use env only as env.NAME")
        found: dict[str, str] = {}
        for name in sorted(names):
            if not self.allowed(name):
                raise RenderError(f"{where}: env.{name} is not readable (names must start with {self.prefix})")
            value = self._environ.get(name)
            if not value:
                raise RenderError(f"{where}: environment variable {name} is not set")
            found[name] = value
        return found


def _render(source: str, position: str, values: Mapping[str, Any], where: str) -> str:
    try:
        return _compile(source, position).render(dict(values))
    except TemplateError as exc:
        raise RenderError(f"{where}: {exc}") from None
    except UndefinedError as exc:
        raise RenderError(f"{where}: template uses an undefined variable: {exc.message}") from None
    except RenderError as exc:
        raise RenderError(f"{where}: {exc}") from None
    except Exception as exc:  # sandbox SecurityError, type errors in expressions: the type only, never a value
        raise RenderError(f"{where}: template failed to render ({type(exc).__name__})") from None


def _native(expression: str, values: Mapping[str, Any], where: str) -> Any:
    try:
        compiled = _text_env().compile_expression(expression, undefined_to_none=False)
        result = compiled(**values)
    except TemplateSyntaxError as exc:
        raise RenderError(f"{where}: template syntax error: {exc.message}") from None
    except Exception as exc:
        raise RenderError(f"{where}: template failed to render ({type(exc).__name__})") from None
    if isinstance(result, Undefined):
        raise RenderError(f"{where}: template uses an undefined variable")
    return result


def _body(value: Any, values: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        whole = _WHOLE_EXPRESSION.match(value)
        if whole is not None:
            return _native(whole.group("expr"), values, where)
        return _render(value, "text", values, where)
    if isinstance(value, Mapping):
        return {key: _body(item, values, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_body(item, values, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def render_request(config: APICallConfiguration, values: Mapping[str, Any], secrets: SecretSource) -> RenderedRequest:
    """The request `config` describes, filled from `values` (arguments and context variables); `RenderError`
    when it cannot be built (a template that does not parse included: `voice-worker check` reports those)."""
    try:
        return _render_request(config, values, secrets)
    except TemplateError as exc:
        raise RenderError(str(exc)) from None


def _render_request(config: APICallConfiguration, values: Mapping[str, Any], secrets: SecretSource) -> RenderedRequest:
    plain = {k: v for k, v in values.items() if k != ENV}
    if names_used(config.url) & {ENV}:
        raise RenderError("configuration.url: env is only allowed in secure headers and query parameters")
    url = _render(config.url, "url", plain, "configuration.url")
    kept: list[str] = []

    def secure_values(source: str, where: str) -> dict[str, Any]:
        env = secrets.values_for(source, where)
        kept.extend(env.values())
        return {**plain, ENV: env}

    headers: list[tuple[str, str]] = []
    secure_headers: set[str] = set()
    for i, header in enumerate(config.headers):
        where = f"configuration.headers[{i}]"
        scope = secure_values(header.value, where) if header.secure else plain
        if not header.secure and ENV in names_used(header.value):
            raise RenderError(f"{where}: env is only allowed where secure: true")
        rendered = _render(header.value, "text", scope, where)
        if _CONTROL.search(rendered):
            raise RenderError(f"{where}: the value contains a line break or another control character")
        if header.secure:
            secure_headers.add(header.key.lower())
            kept.append(rendered)
        headers.append((header.key, rendered))
    params: list[tuple[str, str]] = []
    secure_params: set[str] = set()
    for i, param in enumerate(config.query_params):
        where = f"configuration.query_params[{i}]"
        scope = secure_values(param.value, where) if param.secure else plain
        if not param.secure and ENV in names_used(param.value):
            raise RenderError(f"{where}: env is only allowed where secure: true")
        rendered = _render(param.value, "text", scope, where)
        if param.secure:
            secure_params.add(param.key)
            kept.append(rendered)
        params.append((param.key, rendered))
    body = None
    if config.body is not None:
        for where, text in body_strings(config.body, "configuration.body"):
            if ("{{" in text or "{%" in text) and ENV in names_used(text):
                raise RenderError(f"{where}: env is only allowed in secure headers and query parameters")
        body = _body(config.body, plain, "configuration.body")
    return RenderedRequest(
        method=config.method,
        url=url,
        params=tuple(params),
        headers=tuple(headers),
        json_body=body,
        has_body=config.body is not None,
        secure_params=frozenset(secure_params),
        secure_headers=frozenset(secure_headers),
        secrets=tuple(s for s in kept if s),
    )
