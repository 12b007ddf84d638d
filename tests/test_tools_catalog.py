"""Platform tools in the catalog: the example tool loads and is granted by a procedure, the deploy copies of the
catalog carry it, and every mistake `voice-worker check` can see is one `file: field: reason` line."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from catalog.loader import load_catalog
from contract.settings import EXAMPLE_CATALOG
from worker.check import check_catalog
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
TOOL = "tools/order-lookup.yaml"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None, VOICE_WORKER_MODE="dev", OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY="dg-test-not-real"
    )


def test_the_example_catalog_ships_an_api_call_tool_granted_by_a_procedure(settings: Settings):
    catalog, problems = check_catalog(EXAMPLE_CATALOG, settings)
    assert problems == []
    tool = next(t for t in catalog.tools.values() if t.slug == "order_lookup")
    assert catalog.sources[tool.id] == TOOL and tool.tool_type == "api_call"
    revision = catalog.agents[SUPPORT].active_revision
    ref = next(r for r in revision.tool_refs if catalog.tool_for(r) is tool)
    assert ref.output_bindings == {"order_status": "order_status"}
    granting = [p.name for p in revision.procedures if "order_lookup" in p.tools]
    assert granting == ["order_status"]
    # the secret is read from the environment, never written in the catalog
    header = next(h for h in tool.configuration.headers if h.secure)
    assert "{{ env.TOOL_" in header.value


@pytest.mark.parametrize("copy", ["deploy/k8s/catalog", "deploy/catalog-selfhosted"])
def test_the_deploy_catalogs_carry_the_same_tools(copy: str):
    ours = {p.relative_to(EXAMPLE_CATALOG): p.read_bytes() for p in (EXAMPLE_CATALOG / "tools").rglob("*.yaml")}
    theirs = {p.relative_to(ROOT / copy): p.read_bytes() for p in (ROOT / copy / "tools").rglob("*.yaml")}
    assert ours and theirs == ours
    assert load_catalog(ROOT / copy).problems == []


def test_kustomize_lists_every_tool_file():
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    catalog = next(g for g in kustomization["configMapGenerator"] if g["name"] == "voice-worker-catalog")
    listed = {Path(f).relative_to("catalog") for f in catalog["files"]}
    shipped = {p.relative_to(ROOT / "deploy/k8s/catalog") for p in (ROOT / "deploy/k8s/catalog").rglob("*.yaml")}
    assert listed == shipped
    # a ConfigMap has no directories: every file lands flat in CATALOG_PATH, so their names must not collide
    assert len({p.name for p in shipped}) == len(shipped)


def _catalog_with(
    tmp_path: Path, tool_edits: dict[str, str] | None = None, support_edits: dict[str, str] | None = None
):
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target)
    for path, edits in ((target / TOOL, tool_edits), (target / "support.yaml", support_edits)):
        text = path.read_text()
        for old, new in (edits or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        path.write_text(text)
    return target


def _lines(directory: Path, settings: Settings) -> list[str]:
    return [str(p) for p in check_catalog(directory, settings)[1]]


def test_each_tool_mistake_is_a_file_field_reason_line(tmp_path: Path, settings: Settings):
    directory = _catalog_with(
        tmp_path,
        tool_edits={
            "url: https://orders.acme.example/v1/orders/{{ order_number }}": (
                "url: https://orders.acme.example/v1/orders/{{ order_number }}/{{ region }}"
            ),
            '"Bearer {{ env.TOOL_ACME_ORDERS_TOKEN }}", secure: true}': (
                '"Bearer {{ env.TOOL_ACME_ORDERS_TOKEN }}", secure: true}\n'
                '    - {key: X-Api-Key, value: "written-in-the-catalog", secure: true}\n'
                '    - {key: X-Leak, value: "{{ env.TOOL_ACME_ORDERS_TOKEN }}"}\n'
                '    - {key: X-Other, value: "{{ env.LIVEKIT_API_SECRET }}", secure: true}'
            ),
            "{path: data.order.estimated_delivery, alias: estimated_delivery}": (
                "{path: data.order.estimated_delivery, alias: tier}\n    - {path: 'data..x', alias: broken}"
            ),
        },
        support_edits={
            "output_bindings: {order_status: order_status}": (
                "output_bindings: {order_status: order_status, favourite: order_status, order_count: data.nope}"
            ),
            "tools: [end_call, record_variable, handoff, order_lookup]": "tools: [end_call, order_lookup, book_visit]",
        },
    )
    lines = _lines(directory, settings)
    ref = "support.yaml: revisions[0].tool_refs[0]"
    expected = [
        f"{ref}: tool order_lookup's configuration.url uses 'region', which is neither one of its variables nor a "
        "context variable of this revision",
        f"{TOOL}: configuration.headers[1].value: a secure value must come from the environment ({{{{env.NAME}}}}), "
        "not be written in the catalog",
        f"{TOOL}: configuration.headers[2].value: {{{{env.NAME}}}} is only allowed in a header or query parameter "
        "marked secure: true",
        f"{TOOL}: configuration.headers[3].value: env.LIVEKIT_API_SECRET cannot be read: tool secrets must be named "
        "TOOL_* (TOOL_ENV_PREFIX)",
        f"{ref}: tool order_lookup's result alias 'tier' clashes with the context variable of that name without "
        "setting it: bind it (output_bindings: {tier: tier}) or rename the alias",
        f"{TOOL}: response_schema.field_mappings[4].path: 'data..x' is not a dotted path (name.name[0].name)",
        f"{ref}.output_bindings.favourite: 'favourite' is not a context variable of this revision",
        f"{ref}.output_bindings.order_count: 'data.nope' is not in tool order_lookup's result (its field_mappings "
        "give: order_status, carrier, tracking_number, tier, broken)",
        "support.yaml: revisions[0].procedures[1].tools[2]: 'book_visit' is neither a built-in tool nor the slug of "
        "a tool in this revision's tool_refs",
    ]
    for line in expected:
        assert line in lines, "\n".join(lines)


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ("method: GET", "method: FETCH", "configuration.method: Input should be 'GET', 'POST', 'PUT', 'PATCH' or "),
        (
            "url: https://orders.acme.example/v1/orders/{{ order_number }}",
            "url: /v1/orders/{{ order_number }}",
            "configuration.url: must be an absolute http:// or https:// URL",
        ),
        (
            "url: https://orders.acme.example/v1/orders/{{ order_number }}",
            "url: https://{{ order_number }}.acme.example/v1/orders",
            "configuration.url: must name a host",
        ),
        (
            "url: https://orders.acme.example/v1/orders/{{ order_number }}",
            "url: https://orders.acme.example{{ order_number }}",
            "configuration.url: templates are only allowed after the host (in the path or the query)",
        ),
        (
            '- {name: order_number, type: str, required: true, description: "The order number the caller gives, '
            'digits only"}',
            "- {name: tier, type: str}",
            "support.yaml: revisions[0].tool_refs[0]: tool order_lookup's variable 'tier' clashes with the context "
            "variable 'tier'",
        ),
        ("slug: order_lookup", "slug: end_call", "slug: 'end_call' is the name of one of the worker's own tools"),
    ],
)
def test_a_broken_tool_file_is_reported_on_its_field(tmp_path: Path, settings: Settings, old: str, new: str, line: str):
    lines = _lines(_catalog_with(tmp_path, tool_edits={old: new}), settings)
    prefixed = line if line.startswith("support.yaml") else f"{TOOL}: {line}"
    assert any(entry.startswith(prefixed) for entry in lines), "\n".join(lines)


def test_a_missing_tool_and_a_slug_taken_twice(tmp_path: Path, settings: Settings):
    directory = _catalog_with(tmp_path, support_edits={"{slug: order_lookup,": "{slug: order_lookups,"})
    copy = (directory / TOOL).read_text().replace("9e2c4b1a-7d3f-4a6e-8b5c-1f0a2d3e4c01", str(uuid.uuid4()))
    (directory / "tools" / "copy.yaml").write_text(copy)
    lines = _lines(directory, settings)
    assert (
        "support.yaml: revisions[0].tool_refs[0]: tool order_lookups is not in the catalog (a file with kind: tool)"
    ) in lines
    assert f"{TOOL}: slug: 'order_lookup' is already used by tools/copy.yaml" in lines
    # the agent still loads: its calls run without the missing tool
    assert SUPPORT in load_catalog(directory).agents


def test_a_warm_transfer_needs_a_sip_trunk(tmp_path: Path, settings: Settings):
    directory = _catalog_with(tmp_path)
    (directory / "tools" / "escalate.yaml").write_text(
        "kind: tool\n"
        f"id: {uuid.uuid4()}\n"
        "slug: escalate\n"
        "name: Escalate\n"
        "description: Transfer the caller to a supervisor.\n"
        "tool_type: call_transfer\n"
        "transfer_target: {destination: '+15105550100', mode: warm, web_member: nobody}\n"
    )
    support = directory / "support.yaml"
    support.write_text(
        support.read_text().replace(
            "      - {slug: order_lookup,", "      - {slug: escalate, kind: api}\n      - {slug: order_lookup,"
        )
    )
    lines = _lines(directory, settings)
    assert (
        "tools/escalate.yaml: transfer_target.mode: a warm transfer dials the destination through an outbound SIP "
        "trunk: set SIP_OUTBOUND_TRUNK_ID"
    ) in lines
    assert (
        "support.yaml: revisions[0].tool_refs[0]: tool escalate's web_member 'nobody' is not a member of team "
        "Acme Front Desk"
    ) in lines
    trunked = settings.model_copy(update={"sip_outbound_trunk_id": "ST_test"})
    assert not any("SIP_OUTBOUND_TRUNK_ID" in line for line in _lines(directory, trunked))
