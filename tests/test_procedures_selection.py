"""The pieces of the turn-1 choice without a session: keyword matching, the fallback, the selector's reasons,
the constrained router's answer parsing, the router model factory, the agent's per-procedure instructions and
tools, and the check-time problems of procedures and teams."""

from __future__ import annotations

import uuid

import pytest
from livekit.agents import APITimeoutError
from livekit.agents._exceptions import APIStatusError

from catalog.loader import load_catalog
from catalog.models import Procedure, Team
from catalog.pipeline_config import ModelChainEntry
from catalog.variables import CallVariables
from contract.settings import EXAMPLE_CATALOG
from procedures.agent import CallAgent
from procedures.router import ConstrainedRouter, RouteOption, RouterModels
from procedures.supervisor import ProcedureSelector, fallback_procedure, keyword_match, normalize
from procedures.templates import render
from procedures.validate import procedure_problems, revision_problems, team_problems
from tests.doubles.fake_llm import FakeLLM, Reply
from worker.settings import Settings

CATALOG = load_catalog(EXAMPLE_CATALOG)
SUPPORT = CATALOG.agents[uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")]
REVISION = SUPPORT.active_revision
TEAM = CATALOG.teams[uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")]


def procedure(name: str, trigger: str = "auto", priority: int = 0, **fields) -> Procedure:
    return Procedure(
        id=uuid.uuid4(),
        name=name,
        description=f"About {name}.",
        trigger_type=trigger,
        priority=priority,
        instructions=f"Handle {name}.",
        **fields,
    )


def by_name(name: str) -> Procedure:
    return next(p for p in REVISION.procedures if p.name == name)


@pytest.mark.parametrize(
    ("utterance", "expected"),
    [
        ("WHERE IS MY ORDER??", "order_status"),
        ("hi, i need my tracking-number please", "order_status"),
        ("what's my order's status", None),  # "order status" is not in there as whole words
        ("I ordered a thing", None),
    ],
)
def test_keyword_match_is_whole_words_case_and_punctuation_insensitive(utterance, expected):
    matched = keyword_match(REVISION.procedures, utterance)
    assert (matched.name if matched else None) == expected


def test_keyword_match_prefers_priority_and_ignores_disabled():
    low = procedure("low", "keyword", 1, keywords=("demo",))
    high = procedure("high", "keyword", 5, keywords=("free demo",))
    off = procedure("off", "keyword", 9, keywords=("demo",), enabled=False)
    assert keyword_match([low, high, off], "can I get a free demo").name == "high"
    assert keyword_match([low, high, off], "a demo please").name == "low"
    assert keyword_match([low], "demolition") is None
    assert normalize("  Hello,   WORLD! ") == "hello world"


def test_fallback_is_the_enabled_always_on_with_top_priority():
    first = procedure("first", "always_on", 3)
    second = procedure("second", "always_on", 3)
    top_but_off = procedure("top", "always_on", 9, enabled=False)
    assert fallback_procedure([first, second, top_but_off]) is first
    assert fallback_procedure(REVISION.procedures) == by_name("general_help")
    assert fallback_procedure([procedure("auto_only")]) is None


def route_reply(answer: Reply) -> FakeLLM:
    return FakeLLM([answer])


def choose(name: str, tool: str = "choose_procedure") -> Reply:
    return Reply(tool_calls=[(tool, {"name": name})])


@pytest.mark.parametrize(
    ("answer", "outcome", "choice"),
    [
        (choose("a"), "chosen", "a"),
        (choose("none"), "none", None),
        (choose("z"), "error", None),  # a name outside the enum
        (Reply(tool_calls=[("other_tool", {"name": "a"})]), "error", None),
        (Reply(text="b"), "chosen", "b"),  # a server that ignored tool_choice but answered a name
        (Reply(text="I would say b."), "error", None),
        (Reply(error=APIStatusError("overloaded", status_code=503)), "error", None),
        (Reply(error=APITimeoutError()), "timeout", None),
        (Reply(tool_calls=[("choose_procedure", {"name": "a"})], ttft_s=2.0), "timeout", None),
    ],
)
async def test_router_outcomes(answer, outcome, choice):
    model = route_reply(answer)
    router = ConstrainedRouter(model, [RouteOption("a", "A things"), RouteOption("b", "B things")], timeout_s=0.2)
    result = await router.route("hello")
    assert (result.outcome, result.choice) == (outcome, choice)
    assert result.latency_ms >= 0
    if outcome in ("error", "timeout"):
        assert result.detail and "hello" not in result.detail  # never quotes the caller


async def test_router_request_is_constrained_and_carries_only_the_options():
    model = FakeLLM([choose("sales", "choose_team_member")])
    router = ConstrainedRouter(
        model,
        [RouteOption("support", "Orders.", ("my parcel never arrived",)), RouteOption("sales", "Prices.")],
        timeout_s=1,
        subject="team_member",
        context="Acme sells blenders.",
    )
    assert (await router.route("how much is it")).choice == "sales"
    call = model.calls[0]
    assert call.tool_names == ("choose_team_member",)
    assert [m.role for m in call.messages] == ["system", "user"] and call.last_user_text == "how much is it"
    prompt = call.instructions or ""
    assert "support: Orders." in prompt and '"my parcel never arrived"' in prompt and "Acme sells blenders." in prompt
    assert router.tool.info.raw_schema["parameters"]["properties"]["name"]["enum"] == ["support", "sales", "none"]


def test_router_refuses_bad_options():
    with pytest.raises(ValueError):
        ConstrainedRouter(FakeLLM(), [], timeout_s=1)
    with pytest.raises(ValueError):
        ConstrainedRouter(FakeLLM(), [RouteOption("None", "reserved")], timeout_s=1)
    with pytest.raises(ValueError):
        ConstrainedRouter(FakeLLM(), [RouteOption("a", "x"), RouteOption("a", "y")], timeout_s=1)


async def test_selector_reasons():
    assert ProcedureSelector(REVISION, None).immediate("where is my order").reason == "keyword"
    no_router = ProcedureSelector(REVISION, None).immediate("refund please")
    assert (no_router.reason, no_router.procedure.name) == ("router_error", "general_help")

    only_always = REVISION.model_copy(update={"procedures": (by_name("general_help"),)})
    assert ProcedureSelector(only_always, FakeLLM()).immediate("hi").reason == "always_on"

    nothing = REVISION.model_copy(update={"procedures": (by_name("order_status"),)})
    decided = await ProcedureSelector(nothing, FakeLLM()).decide("hello")
    assert (decided.reason, decided.procedure) == ("no_procedures", None)

    selector = ProcedureSelector(REVISION, FakeLLM([choose("refund_request")]), agent_id=SUPPORT.id)
    decided = await selector.decide("my money back please")
    assert (decided.reason, decided.procedure.name, decided.agent_id) == ("router", "refund_request", SUPPORT.id)
    assert decided.as_choice().id == by_name("refund_request").id

    # with no always-on procedure a router failure keeps the revision's own behaviour
    no_fallback = REVISION.model_copy(update={"procedures": (by_name("refund_request"),)})
    decided = await ProcedureSelector(no_fallback, FakeLLM([choose("none")])).decide("hello")
    assert (decided.reason, decided.procedure) == ("router_none", None)


def test_speculation_candidates_follow_priority_and_always_include_the_fallback():
    autos = tuple(procedure(f"p{i}", priority=i) for i in range(5))
    fallback = procedure("fallback", "always_on")
    revision = REVISION.model_copy(update={"procedures": (*autos, fallback)})
    selector = ProcedureSelector(revision, FakeLLM())
    assert [p.name for p in selector.candidates(4)] == ["p4", "p3", "p2", "fallback"]
    assert [p.name for p in selector.candidates(1)] == ["fallback"]
    assert selector.candidates(0) == []


def test_agent_instructions_and_tools_per_procedure():
    variables = CallVariables.bootstrap(
        REVISION.context_variables, defaults={**REVISION.variable_defaults, "tier": "platinum"}, seeds=None, system={}
    )
    agent = CallAgent(revision=REVISION, variables=variables, on_end=lambda _: None)
    refund = agent.instructions_for(by_name("refund_request"))
    assert refund.startswith("You are Acme's phone support agent")
    assert "(refund_request)" in refund and "Platinum callers get an immediate refund" in refund
    assert agent.instructions_for(None) == agent.instructions
    assert agent.tool_ids_for(None) == {"end_call", "record_variable"}
    assert agent.tool_ids_for(procedure("narrow", tools=("end_call",))) == {"end_call"}
    # a handoff grant on an agent that is not in a team is simply nothing to grant
    assert agent.tool_ids_for(procedure("h", tools=("handoff",))) == frozenset()


def test_router_models_default_to_the_calls_llm_and_build_configured_ones():
    settings = Settings(_env_file=None, VOICE_WORKER_MODE="dev", OPENAI_API_KEY="sk-test", DEEPGRAM_API_KEY="dg-test")
    default = FakeLLM()
    models = RouterModels(settings, default=default)
    assert models(None) is default
    entry = ModelChainEntry(provider="openai", model="gpt-4.1-nano")
    built = models(entry)
    assert built is not default and built.model == "gpt-4.1-nano"
    assert models(entry) is built  # built once per call
    no_key = RouterModels(Settings(_env_file=None, VOICE_WORKER_MODE="dev"), default=default)
    assert no_key(entry) is default


def test_example_catalog_has_no_procedure_or_team_problems():
    for agent in CATALOG.agents.values():
        assert revision_problems(agent.active_revision, "revisions[0]") == []
    assert team_problems(TEAM, CATALOG.agents) == []


def test_procedure_problems():
    revision = REVISION.model_copy(
        update={
            "procedures": (
                procedure("dup", "keyword", 1, keywords=("refund",)),
                procedure("dup", "keyword", 1, keywords=("Refund!", "?!")),
                procedure("none"),
                procedure("a", "always_on", 2),
                procedure("b", "always_on", 2),
            )
        }
    )
    problems = {(p.field, p.reason.split(" ")[0]) for p in procedure_problems(revision, "r")}
    assert problems == {
        ("r.procedures[1].name", "duplicate"),
        ("r.procedures[1].keywords[1]", "keyword"),
        ("r.procedures[1].priority", "keyword"),  # same phrase, same priority: ambiguous
        ("r.procedures[2].name", "'none'"),
        ("r.procedures[4].priority", "several"),
    }


def test_team_problems():
    broken: Team = TEAM.model_copy(
        update={
            "members": (
                TEAM.members[0].model_copy(update={"enabled": False}),
                TEAM.members[1].model_copy(update={"assistant_id": uuid.uuid4(), "router_name": "none"}),
            )
        }
    )
    fields = sorted(p.field for p in team_problems(broken, CATALOG.agents, "team"))
    assert fields == [
        "team.fallback_member_id",
        "team.initial_member_id",
        "team.members[1].assistant_id",
        "team.members[1].router_name",
    ]


def test_every_system_variable_is_defined_for_templates_even_without_a_value():
    # a console session or a unit test has no session type or end user: templates that test them still render
    variables = CallVariables.bootstrap(REVISION.context_variables, defaults={}, seeds=None, system={"agent_id": "a"})
    values = variables.template_values()
    assert values["session_type"] is None and values["end_user_id"] is None and values["agent_id"] == "a"
    assert render('{% if session_type == "test" %}test call{% endif %}ok', values) == "ok"
