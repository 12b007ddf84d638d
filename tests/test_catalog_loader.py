"""Loading the catalog: the example catalog is valid; a bad file is reported and left out, never fatal."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from catalog.loader import CatalogStore, load_catalog
from contract.settings import EXAMPLE_CATALOG

SUPPORT = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01")
SALES = uuid.UUID("5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02")
TEAM = uuid.UUID("3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01")


def test_example_catalog_is_complete():
    catalog = load_catalog(EXAMPLE_CATALOG)
    assert catalog.problems == []
    support = catalog.agents[SUPPORT]
    procedures = support.active_revision.procedures
    assert len(procedures) >= 3
    assert [p.name for p in procedures if not p.enabled] == ["manager_escalation"]
    assert SALES in catalog.agents
    team = catalog.teams[TEAM]
    assert {m.assistant_id for m in team.members} == {SUPPORT, SALES}
    assert team.initial_member.assistant_id == SUPPORT


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target)
    return target


def test_bad_file_is_reported_with_file_field_and_reason(tmp_path):
    directory = _copy(tmp_path)
    text = (
        (directory / "sales.yaml").read_text().replace("endpointing_min_delay_ms: 500", "endpointing_min_delay_ms: -5")
    )
    (directory / "sales.yaml").write_text(text)
    (directory / "broken.yaml").write_text("kind: agent\nid: [unclosed\n")
    catalog = load_catalog(directory)
    lines = sorted(str(p) for p in catalog.problems)
    assert any(line.startswith("sales.yaml: revisions[0].pipeline.endpointing_min_delay_ms: ") for line in lines), lines
    assert any(line.startswith("broken.yaml: line ") and "invalid YAML" in line for line in lines), lines
    # The good agent is still there; the team that needs the broken sales agent is left out and said so.
    assert SUPPORT in catalog.agents and SALES not in catalog.agents
    assert TEAM not in catalog.teams
    assert any(line.startswith("front-desk-team.yaml: members[1].assistant_id:") for line in lines), lines


def test_kind_and_duplicate_ids(tmp_path):
    directory = _copy(tmp_path)
    (directory / "copy.yaml").write_text((directory / "support.yaml").read_text())
    (directory / "weird.yaml").write_text("kind: robot\n")
    problems = [str(p) for p in load_catalog(directory).problems]
    # Files load in name order, so the second definition is the one refused.
    assert f"support.yaml: id: {SUPPORT} is already defined in copy.yaml" in problems
    assert "weird.yaml: kind: must be 'agent', 'team', 'tool', 'persona' or 'scenario', not 'robot'" in problems


PERSONA = uuid.UUID("6e2d4c1b-8a7f-4e3d-9c2b-1a0f9e8d7c01")


def test_personas_load_and_a_missing_one_is_reported(tmp_path):
    directory = _copy(tmp_path)
    catalog = load_catalog(directory)
    assert catalog.personas[PERSONA].name == "Acme on the phone"
    assert catalog.agents[SUPPORT].active_revision.pipeline.persona_id == PERSONA
    assert catalog.teams[TEAM].pipeline.persona_id == PERSONA

    (directory / "personas" / "acme.yaml").unlink()
    problems = [str(p) for p in load_catalog(directory).problems]
    reason = f"persona {PERSONA} is not in the catalog (kind: persona)"
    # the agent and the team still load; `check` reports both references
    assert f"support.yaml: revisions[0].pipeline.persona_id: {reason}" in problems
    assert f"front-desk-team.yaml: pipeline.persona_id: {reason}" in problems
    assert len([p for p in problems if "persona_id" in p]) == 2


def test_store_reloads_changes_and_keeps_serving(tmp_path):
    directory = _copy(tmp_path)
    store = CatalogStore(directory, recheck_s=0)
    assert store.get().agents[SUPPORT].enabled
    text = (
        (directory / "support.yaml")
        .read_text()
        .replace("enabled: true\nactive_revision_id", "enabled: false\nactive_revision_id", 1)
    )
    time.sleep(0.01)
    (directory / "support.yaml").write_text(text)
    assert store.get().agents[SUPPORT].enabled is False
    (directory / "support.yaml").write_text("kind: agent\n: : :\n")
    catalog = store.get()
    assert SUPPORT not in catalog.agents and SALES in catalog.agents
