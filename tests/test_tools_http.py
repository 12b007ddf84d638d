"""api_call tools against a real local HTTP server: templating in every position, secrets, retries, timeout,
size cap, response mapping and the egress policy (loopback, metadata, DNS, redirects)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import pytest
from aiohttp import web

import tools.ssrf
from catalog.tools import InputArgConfig, ToolDefinition
from tests.doubles.tool_api import ToolApi
from tools.api_call import ApiCaller, HttpLimits, run_api_tool
from tools.arguments import operator_values, parameters_schema
from tools.ssrf import EgressPolicy
from tools.templating import SecretSource

SECRET = "tok-SECRET-8f3a9c"
KEY = "key-SECRET-77ab01"
SECRETS = SecretSource({"TOOL_TOKEN": SECRET, "TOOL_KEY": KEY, "LIVEKIT_API_SECRET": "never-read"}, "TOOL_")
DEV = EgressPolicy(allow_loopback=True)
PRODUCTION = EgressPolicy()


def make_tool(configuration: dict[str, Any], **extra: Any) -> ToolDefinition:
    return ToolDefinition.model_validate(
        {
            "id": str(uuid.uuid4()),
            "slug": "probe",
            "name": "Probe",
            "description": "A tool for tests.",
            "tool_type": "api_call",
            "configuration": configuration,
            **extra,
        }
    )


@pytest.fixture
async def api():
    async with ToolApi() as server:
        yield server


async def run(
    tool: ToolDefinition,
    args: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    *,
    policy: EgressPolicy = DEV,
    **caller_kw: Any,
):
    caller = ApiCaller(policy, **caller_kw)
    try:
        return await run_api_tool(tool, args or {}, context or {}, caller=caller, secrets=SECRETS)
    finally:
        await caller.aclose()


def redirect(location: str):
    def respond(_: web.Request) -> web.Response:
        raise web.HTTPFound(location)

    return respond


def status(code: int, **body: Any):
    def respond(_: web.Request) -> web.Response:
        return web.json_response(body, status=code)

    return respond


# -- templating -----------------------------------------------------------------------------------------------


async def test_every_position_is_filled_and_escaped_for_where_it_lands(api: ToolApi):
    tool = make_tool(
        {
            "method": "POST",
            "url": api.base + "/orders/{{ order }}/items?src={{ source }}",
            "headers": [{"key": "X-Name", "value": "{{ name }}"}],
            "query_params": [{"key": "q", "value": "{{ name }}"}, {"key": "n", "value": "{{ qty }}"}],
            "body": {
                "qty": "{{ qty }}",
                "gift": "{{ gift }}",
                "note": "for {{ name }}",
                "nested": {"list": ["{{ qty }}", "x", 7]},
                "order": "{{ order }}",
                "missing_ok": None,
            },
            "variables": [
                {"name": "order", "required": True},
                {"name": "qty", "type": "int"},
                {"name": "gift", "type": "bool"},
            ],
        }
    )
    context = {"name": 'Dana "D" & co', "source": "web call"}
    result = await run(tool, {"order": "a/b?c#d&e", "qty": "3", "gift": "yes"}, context)
    assert result.status == "ok", result.error
    arrived = api.requests[0]
    # the value is one path segment: its /, ?, # and & are encoded, so it adds no segment, query or fragment
    assert arrived.raw_path.startswith("/orders/a%2Fb%3Fc%23d%26e/items?"), arrived.raw_path
    assert arrived.query == {"src": "web call", "q": 'Dana "D" & co', "n": "3"}
    assert arrived.headers["X-Name"] == 'Dana "D" & co'
    # JSON built as JSON: a lone expression keeps its type, text with an expression is a JSON string
    assert arrived.json == {
        "qty": 3,
        "gift": True,
        "note": 'for Dana "D" & co',
        "nested": {"list": [3, "x", 7]},
        "order": "a/b?c#d&e",
        "missing_ok": None,
    }
    assert arrived.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("where", "value", "reason"),
    [
        ({"url": "/items", "headers": [{"key": "X-V", "value": "{{ v }}"}]}, "x\r\nX-Evil: 1", "line break"),
        ({"url": "/items/{{ v }}"}, "..", "'.' or '..'"),
        ({"url": "/items/{{ v }}"}, ".", "'.' or '..'"),
    ],
)
async def test_values_that_would_break_out_of_their_position_are_refused(api: ToolApi, where, value, reason):
    tool = make_tool({**where, "url": api.base + where["url"], "variables": [{"name": "v"}]})
    result = await run(tool, {"v": value})
    assert result.status == "refused" and reason in result.error
    assert api.requests == []


async def test_arguments_are_checked_and_operator_values_apply(api: ToolApi):
    tool = make_tool(
        {
            "url": api.base + "/find",
            "query_params": [{"key": "region", "value": "{{ region }}"}, {"key": "limit", "value": "{{ limit }}"}],
            "variables": [
                {"name": "region", "required": True},
                {"name": "limit", "type": "int", "required": True},
            ],
        },
        input_defaults={"region": {"value": "eu", "type": "pinned"}, "limit": {"value": 5}},
    )
    assert (await run(tool, {"limit": "many"})).status == "invalid_arguments"
    missing = await run(make_tool({"url": api.base + "/x", "variables": [{"name": "a", "required": True}]}), {})
    assert missing.status == "invalid_arguments" and missing.error == "a: required"
    # the pinned region wins over the model's; the default limit applies when the model leaves it out
    assert (await run(tool, {"region": "us"})).status == "ok"
    assert api.hits("/find")[-1].query == {"region": "eu", "limit": "5"}


# -- secrets --------------------------------------------------------------------------------------------------


async def test_secrets_reach_the_service_and_nothing_else(api: ToolApi, caplog):
    def echo_everything(request: web.Request) -> web.Response:
        # a careless service that echoes credentials back, in the body and in its reason phrase
        return web.json_response(
            {"saw": dict(request.headers), "query": dict(request.query), "nested": [{"again": f"key={KEY}"}]}
        )

    api.answer("/echo", echo_everything)
    tool = make_tool(
        {
            "url": api.base + "/echo",
            "headers": [
                {"key": "Authorization", "value": "Bearer {{ env.TOOL_TOKEN }}", "secure": True},
                {"key": "X-Plain", "value": "visible"},
            ],
            "query_params": [{"key": "api_key", "value": "{{ env.TOOL_KEY }}", "secure": True}],
        }
    )
    caplog.set_level(logging.DEBUG)
    result = await run(tool)
    assert result.status == "ok"
    arrived = api.requests[0]
    assert arrived.headers["Authorization"] == f"Bearer {SECRET}" and arrived.query["api_key"] == KEY
    shown = json.dumps(result.request) + json.dumps(result.result) + result.for_model(10_000) + caplog.text
    assert SECRET not in shown and KEY not in shown
    assert result.request["headers"]["Authorization"] == "***" and result.request["headers"]["X-Plain"] == "visible"
    assert "api_key=***" in result.request["url"]
    assert result.result["saw"]["Authorization"] == "***" and result.result["nested"] == [{"again": "key=***"}]

    api.answer("/fail", lambda _: web.Response(status=500, reason=f"bad {SECRET}"))
    failed = await run(make_tool({**tool.configuration.model_dump(), "url": api.base + "/fail"}))
    assert failed.status == "http_error" and SECRET not in failed.error and "***" in failed.error


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"key": "X-K", "value": "{{ env.TOOL_TOKEN }}"}, "only allowed where secure: true"),
        ({"key": "X-K", "value": "{{ env.LIVEKIT_API_SECRET }}", "secure": True}, "not readable"),
        ({"key": "X-K", "value": "{{ env.TOOL_UNSET }}", "secure": True}, "TOOL_UNSET is not set"),
        ({"key": "X-K", "value": "{{ env }}", "secure": True}, "env only as env.NAME"),
    ],
)
async def test_environment_is_read_only_in_secure_values_and_only_tool_names(api: ToolApi, header, reason):
    result = await run(make_tool({"url": api.base + "/x", "headers": [header]}))
    assert result.status == "refused" and reason in result.error, result.error
    assert api.requests == [] and "never-read" not in json.dumps(result.request)


# -- retries and limits ---------------------------------------------------------------------------------------


def flaky(failures: int, code: int = 503):
    seen = {"n": 0}

    def respond(_: web.Request) -> web.Response:
        seen["n"] += 1
        if seen["n"] <= failures:
            return web.json_response({"error": "busy"}, status=code)
        return web.json_response({"ok": True})

    return respond


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_a_503_is_retried_with_exponential_backoff(api: ToolApi):
    api.answer("/flaky", flaky(2))
    retry = {"max_retries": 3, "base_delay_seconds": 0.5, "max_delay_seconds": 1.5, "jitter": False}
    sleeps = Sleeps()
    result = await run(make_tool({"url": api.base + "/flaky", "retry": retry}), sleep=sleeps)
    assert result.status == "ok" and result.attempts == 3 and len(api.hits("/flaky")) == 3
    assert sleeps.delays == [0.5, 1.0]

    api.answer("/down", flaky(10))
    sleeps = Sleeps()
    result = await run(make_tool({"url": api.base + "/down", "retry": retry}), sleep=sleeps)
    assert result.status == "http_error" and result.http_status == 503 and result.attempts == 4
    assert sleeps.delays == [0.5, 1.0, 1.5]  # capped at max_delay_seconds


async def test_jitter_keeps_each_delay_within_half_to_full_backoff(api: ToolApi):
    api.answer("/flaky", flaky(3))
    retry = {"max_retries": 3, "base_delay_seconds": 1.0, "max_delay_seconds": 30, "jitter": True}
    sleeps = Sleeps()
    draws = iter([0.0, 1.0, 0.5])
    result = await run(
        make_tool({"url": api.base + "/flaky", "retry": retry}), sleep=sleeps, jitter=lambda: next(draws)
    )
    assert result.status == "ok" and sleeps.delays == [0.5, 2.0, 3.0]


async def test_a_400_is_final(api: ToolApi):
    api.answer("/bad", status(400, error="no such order"))
    retry = {"max_retries": 3, "base_delay_seconds": 0.1, "jitter": False}
    result = await run(make_tool({"url": api.base + "/bad", "retry": retry}), sleep=Sleeps())
    assert result.status == "http_error" and result.http_status == 400 and result.attempts == 1
    assert len(api.hits("/bad")) == 1
    assert json.loads(result.for_model(1000)) == {"error": "the service answered 400 Bad Request"}


async def test_a_post_is_not_repeated_unless_the_tool_says_it_is_safe(api: ToolApi):
    api.answer("/orders", flaky(1))
    retry = {"max_retries": 2, "base_delay_seconds": 0.1, "jitter": False}
    tool = make_tool({"method": "POST", "url": api.base + "/orders", "body": {"a": 1}, "retry": retry})
    result = await run(tool, sleep=Sleeps())
    assert result.status == "http_error" and len(api.hits("/orders")) == 1
    safe = make_tool({**tool.configuration.model_dump(), "retry": {**retry, "retry_non_idempotent": True}})
    api.answer("/orders", flaky(1))
    result = await run(safe, sleep=Sleeps())
    assert result.status == "ok" and len(api.hits("/orders")) == 3
    assert api.hits("/orders")[-1].json == {"a": 1}


async def test_a_transport_error_is_retried(api: ToolApi):
    dead = ToolApi()
    await dead.start()
    port = dead.port
    await dead.aclose()  # nothing listens there any more: connection refused
    retry = {"max_retries": 1, "base_delay_seconds": 0.1, "jitter": False}
    result = await run(make_tool({"url": f"http://127.0.0.1:{port}/x", "retry": retry}), sleep=Sleeps())
    assert result.status == "error" and result.attempts == 2 and "could not reach" in result.error


async def test_the_timeout_bounds_an_attempt(api: ToolApi):
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    api.answer("/slow", slow)
    started = time.monotonic()
    result = await run(make_tool({"url": api.base + "/slow", "timeout": 1}))
    elapsed = time.monotonic() - started
    assert result.status == "timeout" and result.error == "no answer within 1 s"
    assert 0.9 < elapsed < 2.5


async def test_an_oversized_answer_is_refused(api: ToolApi):
    api.answer("/big", lambda _: web.Response(body=b"x" * 5000, content_type="text/plain"))

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: the cap applies while reading
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"y" * 1000)
        await response.write_eof()
        return response

    api.answer("/stream", streamed)
    for path in ("/big", "/stream"):
        result = await run(make_tool({"url": api.base + path}), limits=HttpLimits(max_response_bytes=2048))
        assert result.status == "error" and "larger than 2048 bytes" in result.error, path


# -- mapping --------------------------------------------------------------------------------------------------


async def test_field_mappings_pick_the_answer_and_missing_paths_are_none(api: ToolApi):
    order = {
        "data": {
            "order": {
                "status": "shipped",
                "shipments": [{"carrier": "UPS", "tracking": "1Z"}, {"carrier": "DHL"}],
                "internal_margin": 0.42,
            }
        }
    }
    api.answer("/order", lambda _: web.json_response(order))
    mappings = [
        {"path": "data.order.status", "alias": "status"},
        {"path": "data.order.shipments[0].carrier", "alias": "first_carrier"},
        {"path": "data.order.shipments[-1].carrier", "alias": "last_carrier"},
        {"path": "data.order.shipments.0.tracking", "alias": "tracking"},
        {"path": "data.order.shipments[5].carrier", "alias": "sixth"},
        {"path": "data.order.eta"},
        {"path": "data.order.status.deeper", "alias": "through_a_string"},
    ]
    result = await run(make_tool({"url": api.base + "/order"}, response_schema={"field_mappings": mappings}))
    assert result.result == {
        "status": "shipped",
        "first_carrier": "UPS",
        "last_carrier": "DHL",
        "tracking": "1Z",
        "sixth": None,
        "data.order.eta": None,
        "through_a_string": None,
    }
    assert "internal_margin" not in result.for_model(10_000)


async def test_the_model_reads_a_capped_result(api: ToolApi):
    api.answer("/long", lambda _: web.json_response({"text": "z" * 10_000}))
    result = await run(make_tool({"url": api.base + "/long"}))
    text = result.for_model(500)
    assert len(text) <= 500 and text.endswith("[truncated: the result was too long]")


# -- egress policy --------------------------------------------------------------------------------------------


async def test_production_refuses_loopback_and_dev_allows_it(api: ToolApi):
    tool = make_tool({"url": api.base + "/x"})
    refused = await run(tool, policy=PRODUCTION)
    assert refused.status == "refused" and "127.0.0.1 is a loopback address" in refused.error
    assert api.requests == []
    assert (await run(tool, policy=DEV)).status == "ok"
    allowed = EgressPolicy.from_allowlist(["127.0.0.1/32"], allow_loopback=False)
    assert (await run(tool, policy=allowed)).status == "ok"


async def test_a_name_resolving_to_loopback_is_refused_and_the_checked_address_is_used(api: ToolApi, monkeypatch):
    async def fake_dns(host: str, port: int) -> list[str]:
        return {"orders.example.test": ["127.0.0.1"], "mixed.example.test": ["93.184.216.34", "10.0.0.7"]}[host]

    monkeypatch.setattr(tools.ssrf, "resolve", fake_dns)
    tool = make_tool({"url": f"http://orders.example.test:{api.port}/x"})
    refused = await run(tool, policy=PRODUCTION)
    assert refused.status == "refused"
    assert refused.error == "orders.example.test resolves to 127.0.0.1, a loopback address"
    assert api.requests == []
    # one bad address among good ones refuses the name
    mixed = await run(make_tool({"url": "http://mixed.example.test/x"}), policy=PRODUCTION)
    assert "10.0.0.7, a private address" in mixed.error
    # allowed: the request goes to the address that was checked, under the name it was made for
    assert (await run(tool, policy=DEV)).status == "ok"
    assert api.requests[0].headers["Host"] == f"orders.example.test:{api.port}"
    by_name = EgressPolicy.from_allowlist(["*.example.test"], allow_loopback=False)
    assert (await run(tool, policy=by_name)).status == "ok"


async def test_a_redirect_to_the_metadata_service_is_refused_even_in_dev(api: ToolApi):
    def to_metadata(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/security-credentials/")

    api.answer("/go", to_metadata)
    result = await run(make_tool({"url": api.base + "/go"}), policy=DEV)
    assert result.status == "refused" and "169.254.169.254 is a link-local address (cloud metadata)" in result.error
    assert [r.path for r in api.requests] == ["/go"]


async def test_a_redirect_is_followed_and_credentials_stay_with_their_origin(api: ToolApi, monkeypatch):
    async def fake_dns(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    monkeypatch.setattr(tools.ssrf, "resolve", fake_dns)
    api.answer("/same", redirect("/landing"))
    api.answer("/elsewhere", redirect(f"http://other.test:{api.port}/landing"))
    api.answer("/landing", lambda _: web.json_response({"landed": True}))
    headers = [
        {"key": "X-Api-Key", "value": "{{ env.TOOL_KEY }}", "secure": True},
        {"key": "Authorization", "value": "Bearer {{ env.TOOL_TOKEN }}", "secure": True},
        {"key": "X-Trace", "value": "t-1"},
    ]
    result = await run(make_tool({"url": api.base + "/same", "headers": headers}))
    assert result.status == "ok" and result.result == {"landed": True}
    assert api.hits("/landing")[-1].headers["X-Api-Key"] == KEY
    result = await run(make_tool({"url": api.base + "/elsewhere", "headers": headers}))
    assert result.status == "ok"
    landed = api.hits("/landing")[-1].headers
    assert "X-Api-Key" not in landed and "Authorization" not in landed and landed["X-Trace"] == "t-1"
    assert landed["Host"] == f"other.test:{api.port}"


def test_the_policy_refuses_every_kind_of_internal_address():
    import ipaddress

    cases = {
        "10.1.2.3": "a private address",
        "192.168.0.1": "a private address",
        "172.16.5.4": "a private address",
        "fd00::1": "a private address",
        "169.254.169.254": "a link-local address (cloud metadata)",
        "fe80::1": "a link-local address (cloud metadata)",
        "224.0.0.251": "a multicast address",
        "ff02::1": "a multicast address",
        "127.0.0.1": "a loopback address",
        "::1": "a loopback address",
        "::ffff:127.0.0.1": "a loopback address",
        "::ffff:169.254.169.254": "a link-local address (cloud metadata)",
        "0.0.0.0": "not a public address",
        "100.64.0.1": "not a public address",
    }
    for text, reason in cases.items():
        assert PRODUCTION.refusal(ipaddress.ip_address(text)) == reason, text
    assert PRODUCTION.refusal(ipaddress.ip_address("93.184.216.34")) is None
    assert DEV.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert DEV.refusal(ipaddress.ip_address("10.0.0.1")) == "a private address"
    with pytest.raises(ValueError):
        EgressPolicy.from_allowlist(["not a host/"], allow_loopback=False)


async def test_an_empty_answer_is_a_plain_success_and_a_broken_template_a_refusal(api: ToolApi):
    api.answer("/noop", lambda _: web.Response(status=204))
    done = await run(make_tool({"method": "DELETE", "url": api.base + "/noop"}))
    assert done.status == "ok" and json.loads(done.for_model(1000)) == {"done": True, "http_status": 204}
    broken = await run(make_tool({"url": api.base + "/x", "headers": [{"key": "X", "value": "{{ oops"}]}))
    assert broken.status == "refused" and "template syntax error" in broken.error and api.hits("/x") == []


def test_the_model_sees_the_variables_as_a_json_schema_without_pinned_ones():
    tool = make_tool(
        {
            "url": "https://api.example.com/x",
            "variables": [
                {"name": "order", "type": "str", "required": True, "description": "The order number"},
                {"name": "qty", "type": "int", "required": True},
                {"name": "express", "type": "bool"},
                {"name": "region", "type": "str", "required": True},
            ],
        },
        input_defaults={"qty": {"value": 1}},
    )
    pinned = {"region": InputArgConfig(value="eu", type="pinned")}
    schema = parameters_schema(tool, operator_values(tool, pinned))
    assert schema == {
        "type": "object",
        "properties": {
            "order": {"type": "string", "description": "The order number"},
            "qty": {"type": "integer", "description": "(default: 1)"},
            "express": {"type": "boolean"},
        },
        "required": ["order"],
        "additionalProperties": False,
    }


async def test_templates_run_in_the_sandbox(api: ToolApi):
    tool = make_tool({"url": api.base + "/x", "headers": [{"key": "X", "value": "{{ name.__class__.__mro__ }}"}]})
    result = await run(tool, context={"name": "Dana"})
    assert result.status == "refused" and "SecurityError" in result.error and api.requests == []
