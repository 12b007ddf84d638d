"""Running an api_call tool once: build the request, send it within the egress policy, map the answer.

Sending: httpx, one attempt bounded by the tool's `timeout` (connect, redirects and body together), redirects
followed by hand so that every hop passes `tools.ssrf.vet` (and a hop to another origin drops the secure
headers), the response read up to `max_response_bytes` and no further. Retries follow the tool's `retry`
(exponential backoff, `base_delay_seconds * 2**n` capped at `max_delay_seconds`, with jitter): only for
idempotent methods (GET, PUT, DELETE) unless `retry_non_idempotent` says the endpoint is safe to repeat, and
only after a 5xx answer or a transport error (timeouts included). A refusal by the egress policy, a 4xx or an
oversized answer is final.

What comes back (`ApiToolResult`) carries no secret: the request is described masked, every string of the
response has the request's secrets scrubbed out, and errors are our own one-line descriptions, never an
exception's text (httpx puts URLs, query strings included, in its messages).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from catalog.tools import InputArgConfig, ToolDefinition
from tools.arguments import ArgumentError, operator_values, resolve_arguments
from tools.mapping import map_fields
from tools.ssrf import EgressLookupFailed, EgressPolicy, EgressRefused, vet
from tools.templating import RenderedRequest, RenderError, SecretSource, render_request

log = logging.getLogger("voice_worker.tools")

CallStatus = Literal["ok", "http_error", "timeout", "refused", "invalid_arguments", "error"]

USER_AGENT = "voice-worker-tools/1"
_TRUNCATED = " ... [truncated: the result was too long]"
_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Headers that identify the caller to the first origin; a redirect elsewhere must not carry them on.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True)
class HttpLimits:
    max_response_bytes: int = 1_000_000
    max_redirects: int = 5
    # What the model sees of a tool's result, in characters of JSON.
    max_result_chars: int = 4_000


@dataclass
class ApiToolResult:
    status: CallStatus
    # Mapped fields (or the whole answer when the tool maps none), secrets scrubbed; what output_bindings read.
    result: Any = None
    http_status: int | None = None
    attempts: int = 0
    request: dict[str, Any] | None = None
    error: str | None = None
    elapsed_ms: float = 0.0

    def for_model(self, max_chars: int) -> str:
        """The text the model reads: the result as JSON within `max_chars`, or what went wrong."""
        if self.status == "ok":
            done = {"done": True, "http_status": self.http_status}
            text = json.dumps(done if self.result is None else self.result, ensure_ascii=False, default=str)
            if len(text) > max_chars:
                text = text[: max_chars - len(_TRUNCATED)] + _TRUNCATED
            return text
        return json.dumps({"error": self.error or self.status}, ensure_ascii=False)


@dataclass
class _Answer:
    status_code: int
    reason: str
    body: bytes
    content_type: str


class _Oversized(Exception):
    pass


@dataclass
class ApiCaller:
    """Sends rendered requests for the tools of one call (or one command-line run), with pooled connections."""

    policy: EgressPolicy
    limits: HttpLimits = field(default_factory=HttpLimits)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    jitter: Callable[[], float] = random.random
    _pools: dict[tuple[str, str, int | None], httpx.AsyncHTTPTransport] = field(default_factory=dict)

    def _pool(self, url: httpx.URL) -> httpx.AsyncHTTPTransport:
        # One connection pool per origin: requests go to the checked address, so a pool shared by several host
        # names could reuse a TLS connection verified for one name for a request to another at the same address.
        # The transport, not an httpx client: a client logs every request's full URL (query secrets included) at
        # INFO, and would bring environment proxies, cookies and redirects that must not apply here.
        key = (url.scheme, url.host, url.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = httpx.AsyncHTTPTransport()
        return pool

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()

    async def _send_once(self, rendered: RenderedRequest, timeout_s: float) -> _Answer:
        body_kwargs: dict[str, Any] = {"json": rendered.json_body} if rendered.has_body else {}
        headers = httpx.Headers(list(rendered.headers))
        headers.setdefault("User-Agent", USER_AGENT)
        headers.setdefault("Accept", "application/json")
        url = httpx.URL(rendered.url)
        if rendered.params:
            # merged: a query written into the URL template stays (httpx's `params=` would replace it)
            url = url.copy_merge_params(list(rendered.params))
        request = httpx.Request(rendered.method, url, headers=headers, **body_kwargs)
        origin = (request.url.scheme, request.url.host, request.url.port)
        for _hop in range(self.limits.max_redirects + 1):
            address = await vet(request.url, self.policy)
            pinned = request.url.copy_with(host=address)
            pinned_headers = httpx.Headers(request.headers)
            pinned_headers["Host"] = request.url.netloc.decode("ascii")
            extensions: dict[str, Any] = {"timeout": httpx.Timeout(timeout_s).as_dict()}
            if request.url.scheme == "https":
                extensions["sni_hostname"] = request.url.host
            sent = httpx.Request(
                request.method, pinned, headers=pinned_headers, content=request.content, extensions=extensions
            )
            response = await self._pool(request.url).handle_async_request(sent)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    target = request.url.join(location)
                    keep_body = response.status_code in (307, 308)
                    next_method = request.method if keep_body or request.method in ("GET",) else "GET"
                    if response.status_code == 303:
                        next_method = "GET"
                    next_headers = httpx.Headers(request.headers)
                    next_headers.pop("Host", None)
                    if (target.scheme, target.host, target.port) != origin:
                        for name in {*rendered.secure_headers, *_CREDENTIAL_HEADERS}:
                            next_headers.pop(name, None)
                    if next_method != request.method or not keep_body:
                        next_headers.pop("Content-Type", None)
                        next_headers.pop("Content-Length", None)
                    request = httpx.Request(
                        next_method,
                        target,
                        headers=next_headers,
                        content=request.content if keep_body and next_method == request.method else None,
                    )
                    continue
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.limits.max_response_bytes:
                    raise _Oversized()
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.limits.max_response_bytes:
                        raise _Oversized()
                    chunks.append(chunk)
                return _Answer(
                    status_code=response.status_code,
                    reason=response.reason_phrase,
                    body=b"".join(chunks),
                    content_type=response.headers.get("content-type", ""),
                )
            finally:
                await response.aclose()
        raise EgressRefused(f"more than {self.limits.max_redirects} redirects")

    async def send(self, tool: ToolDefinition, rendered: RenderedRequest) -> tuple[ApiToolResult, _Answer | None]:
        """Send with the tool's timeout and retry policy; the answer of the last attempt, if any."""
        config = tool.configuration
        assert config is not None, "send() is for api_call tools"
        retry = config.retry
        repeatable = rendered.method in _IDEMPOTENT or (retry is not None and retry.retry_non_idempotent)
        attempts_allowed = 1 + (retry.max_retries if retry is not None and repeatable else 0)
        outcome = ApiToolResult(status="error", request=rendered.masked())
        for attempt in range(attempts_allowed):
            outcome.attempts = attempt + 1
            retryable = False
            try:
                async with asyncio.timeout(config.timeout):
                    answer = await self._send_once(rendered, config.timeout)
            except EgressRefused as exc:
                outcome.status, outcome.error = "refused", str(exc)
                return outcome, None
            except _Oversized:
                outcome.status = "error"
                outcome.error = f"the answer is larger than {self.limits.max_response_bytes} bytes"
                return outcome, None
            except (TimeoutError, httpx.TimeoutException):
                outcome.status, outcome.error = "timeout", f"no answer within {config.timeout} s"
                retryable = True
            except (httpx.TransportError, EgressLookupFailed) as exc:
                detail = str(exc) if isinstance(exc, EgressLookupFailed) else type(exc).__name__
                outcome.status, outcome.error = "error", f"could not reach the service ({detail})"
                retryable = True
            else:
                outcome.http_status = answer.status_code
                if answer.status_code < 400:
                    outcome.status, outcome.error = "ok", None
                    return outcome, answer
                outcome.status = "http_error"
                outcome.error = rendered.scrub(f"the service answered {answer.status_code} {answer.reason}".strip())
                if answer.status_code < 500:
                    return outcome, answer
                retryable = True
            if not retryable or attempt + 1 >= attempts_allowed:
                break
            assert retry is not None
            delay = min(retry.max_delay_seconds, retry.base_delay_seconds * 2**attempt)
            if retry.jitter:
                delay = delay / 2 + self.jitter() * delay / 2
            log.info(
                "tool %s: attempt %d failed (%s); retrying in %.2f s", tool.slug, attempt + 1, outcome.status, delay
            )
            await self.sleep(delay)
        return outcome, None


def _decode(answer: _Answer, rendered: RenderedRequest) -> Any:
    if not answer.body.strip():
        return None  # 204 No Content and the like
    text = answer.body.decode("utf-8", errors="replace")
    if "json" in answer.content_type.lower() or text.lstrip()[:1] in ("{", "["):
        try:
            return rendered.scrub_value(json.loads(text))
        except ValueError:
            pass
    return rendered.scrub(text)


async def run_api_tool(
    tool: ToolDefinition,
    raw_arguments: Mapping[str, Any],
    context_values: Mapping[str, Any],
    *,
    caller: ApiCaller,
    secrets: SecretSource,
    ref_defaults: Mapping[str, InputArgConfig] | None = None,
) -> ApiToolResult:
    """One run of an api_call tool: arguments checked, request rendered and sent, answer mapped."""
    started = time.perf_counter()
    config = tool.configuration
    assert config is not None, "run_api_tool() is for api_call tools"

    def done(result: ApiToolResult) -> ApiToolResult:
        result.elapsed_ms = (time.perf_counter() - started) * 1000
        return result

    try:
        arguments = resolve_arguments(tool, operator_values(tool, ref_defaults), raw_arguments)
    except ArgumentError as exc:
        return done(ApiToolResult(status="invalid_arguments", error=str(exc)))
    # Context variables win over arguments of the same name (`voice-worker check` reports such clashes): the
    # model must not be able to replace a value the call set, such as the caller's id.
    values = {**arguments, **context_values}
    try:
        rendered = render_request(config, values, secrets)
    except RenderError as exc:
        return done(ApiToolResult(status="refused", error=str(exc)))
    outcome, answer = await caller.send(tool, rendered)
    if answer is not None:
        body = _decode(answer, rendered)
        if outcome.status == "ok":
            mappings = tool.response_schema.field_mappings if tool.response_schema else ()
            outcome.result = map_fields(body, mappings) if mappings else body
    return done(outcome)
