"""What a platform tool is, and how a revision refers to one.

A tool file (`kind: tool`, conventionally under the catalog's `tools/` directory) is one platform tool with its
active revision folded in: `ToolResponse` (`id`, `name`, `description`, `tool_type`) plus `ToolRevisionResponse`
(`configuration`: `APICallConfiguration`, `response_schema`: `ResponseFieldSelector`, `transfer_target`:
`TransferTargetView`, `input_defaults`). Revisions attach tools with the platform's `ToolRef` (`id` or `slug`,
`kind`, `input_defaults`, `output_bindings`). Field names are the platform's so that a tool exported from it
reads the same here.

Extensions (not in the platform schema), each optional: `slug` on the tool (the function name the model sees and
the name a `ToolRef` or a procedure's `tools` use), `RetryConfig.retry_non_idempotent`, `filler_text` (what the
agent says while a slow tool runs) and `TransferTargetView.web_member` (the team member a web caller is handed
to, since a web call has no phone line to transfer).

This module only describes and range-checks the data; whether templates name known variables, whether secrets
come from the environment and whether a URL is reachable is `tools.validate`'s and `tools.ssrf`'s business.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ToolType = Literal["api_call", "call_transfer"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
VariableType = Literal["str", "int", "float", "bool"]
ToolRefKind = Literal["api", "integration", "util", "kb"]

# OpenAI-compatible function names: letters, digits, underscore and dash, at most 64.
SLUG = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeaderConfig(_Strict):
    """An HTTP header; `secure` values come from the environment (`{{env.NAME}}`) and are never shown."""

    key: str = Field(min_length=1, max_length=256)
    value: str = Field(max_length=8192)
    secure: bool = False

    @field_validator("key")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not an HTTP header name (templates are not allowed in names)")
        return value


class QueryParamConfig(_Strict):
    key: str = Field(min_length=1, max_length=256)
    value: str = Field(max_length=8192)
    secure: bool = False

    @field_validator("key")
    @classmethod
    def _literal_key(cls, value: str) -> str:
        if "{{" in value or "{%" in value:
            raise ValueError("templates are not allowed in query parameter names")
        return value


class VariableDefinition(_Strict):
    """One argument of the tool, as the model fills it in."""

    name: str = Field(max_length=64)
    type: VariableType = "str"
    required: bool = False
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not an identifier ([A-Za-z_]\\w*)")
        if value == "env":
            raise ValueError("'env' is reserved for {{env.NAME}} (secrets from the environment)")
        return value


class RetryConfig(_Strict):
    max_retries: int = Field(0, ge=0, le=5)
    base_delay_seconds: float = Field(1.0, ge=0.1, le=30.0)
    max_delay_seconds: float = Field(30.0, ge=1.0, le=120.0)
    jitter: bool = True
    # Extension: POST and PATCH are not repeated by default (a second attempt could place a second order).
    retry_non_idempotent: bool = False


class APICallConfiguration(_Strict):
    method: HttpMethod = "GET"
    url: str = Field(min_length=1, max_length=4096)
    headers: tuple[HeaderConfig, ...] = ()
    query_params: tuple[QueryParamConfig, ...] = ()
    body: dict[str, Any] | None = None
    variables: tuple[VariableDefinition, ...] = ()
    retry: RetryConfig | None = None
    timeout: int = Field(30, ge=1, le=300, description="Request timeout in seconds")

    @field_validator("url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Scheme and host are literal: a value filled in by the model or the caller must never choose the server.
        head = value.split("{{", 1)[0].split("{%", 1)[0]
        parts = urlsplit(head)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an absolute http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("must name a host")
        authority_end = len(parts.scheme) + 3 + len(parts.netloc)
        if len(head) == len(value) or len(head) > authority_end:
            return value
        raise ValueError("templates are only allowed after the host (in the path or the query)")

    @model_validator(mode="after")
    def _unique(self) -> APICallConfiguration:
        names = [v.name for v in self.variables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variable declared twice: {', '.join(dupes)}")
        if self.body is not None and self.method in ("GET", "DELETE"):
            raise ValueError(f"{self.method} requests carry no body")
        return self


class ResponseFieldMapping(_Strict):
    path: str = Field(min_length=1, max_length=512, description="Dot-path into the response, e.g. data.items[0].id")
    alias: str | None = Field(None, min_length=1, max_length=64)

    @property
    def key(self) -> str:
        """The name the mapped value has in the tool's result."""
        return self.alias or self.path


class ResponseFieldSelector(_Strict):
    field_mappings: tuple[ResponseFieldMapping, ...] = ()

    @model_validator(mode="after")
    def _unique_keys(self) -> ResponseFieldSelector:
        keys = [m.key for m in self.field_mappings]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"two field_mappings produce the same key: {', '.join(dupes)}")
        return self


class TransferTargetView(_Strict):
    """Where a call_transfer tool sends the caller: a phone number (+E.164) or a `sip:` / `tel:` URI."""

    destination: str = Field(min_length=1, max_length=256)
    mode: Literal["cold", "warm"] = "cold"
    # Extension: a web caller has no phone line to transfer; in a team call they go to this member instead.
    web_member: str | None = Field(None, min_length=1, max_length=64)

    @field_validator("destination")
    @classmethod
    def _dialable(cls, value: str) -> str:
        if re.fullmatch(r"\+[1-9]\d{6,14}", value) or re.fullmatch(r"(sip|tel):\S+", value):
            return value
        raise ValueError("must be a +E.164 number (+15105550100) or a sip: / tel: URI")


class InputArgConfig(_Strict):
    """An operator-set argument: `default` the model may override, `pinned` it cannot (it is not even shown)."""

    value: Any
    type: Literal["default", "pinned"] = "default"


class ToolDefinition(_Strict):
    id: uuid.UUID
    slug: str = Field(description="The function name the model sees; ToolRef.slug and procedures use it.")
    name: str = Field(min_length=1, max_length=120)
    description: str = Field(min_length=1, max_length=2000, description="When to use the tool; shown to the model.")
    tool_type: ToolType
    configuration: APICallConfiguration | None = None
    response_schema: ResponseFieldSelector | None = None
    transfer_target: TransferTargetView | None = None
    input_defaults: dict[str, InputArgConfig] | None = None
    filler_text: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(f"{value!r} is not a tool slug ([A-Za-z_][A-Za-z0-9_-]{{0,63}})")
        return value

    @model_validator(mode="after")
    def _shape_matches_type(self) -> ToolDefinition:
        if self.tool_type == "api_call":
            if self.configuration is None:
                raise ValueError("an api_call tool needs configuration")
            if self.transfer_target is not None:
                raise ValueError("transfer_target is only for call_transfer tools")
            declared = {v.name for v in self.configuration.variables}
            unknown = sorted(set(self.input_defaults or {}) - declared)
            if unknown:
                raise ValueError(f"input_defaults names undeclared variables: {', '.join(unknown)}")
        else:
            if self.transfer_target is None:
                raise ValueError("a call_transfer tool needs transfer_target")
            if self.configuration is not None or self.response_schema is not None or self.input_defaults:
                raise ValueError("configuration, response_schema and input_defaults are only for api_call tools")
        return self

    @property
    def variables(self) -> tuple[VariableDefinition, ...]:
        return self.configuration.variables if self.configuration is not None else ()


class ToolRef(_Strict):
    """A revision's attachment of a tool, by `id` or `slug` (the platform's `ToolRef`)."""

    id: uuid.UUID | None = None
    slug: str | None = None
    kind: ToolRefKind = "api"
    input_defaults: dict[str, InputArgConfig] | None = None
    output_bindings: dict[str, str] | None = Field(
        None, description="Context variable name -> dot-path into the tool's result."
    )

    @model_validator(mode="after")
    def _names_a_tool(self) -> ToolRef:
        if self.id is None and self.slug is None:
            raise ValueError("a tool ref needs an id or a slug")
        return self

    @property
    def label(self) -> str:
        return self.slug or str(self.id)


def find_tool(tools: Mapping[uuid.UUID, ToolDefinition], ref: ToolRef) -> ToolDefinition | None:
    """The tool `ref` names: by id (and then its slug, if given, must agree), else by slug; None if none."""
    if ref.kind != "api":
        return None
    if ref.id is not None:
        found = tools.get(ref.id)
        return found if found is not None and (ref.slug is None or found.slug == ref.slug) else None
    return next((t for t in tools.values() if t.slug == ref.slug), None)
