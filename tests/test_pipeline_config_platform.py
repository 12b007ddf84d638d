"""Every behaviour field of the platform's `VoicePipelineConfigCreate` (Feather v1.21) is accepted under its own
name, type, enum and range, and lands where the worker reads it.

The schema is read from tests/contracts/voice-pipeline-config-create.json, a copy of the platform's reference
(../shared/reference beside the checkout; the copy is checked against it when it is there). Ranges, enums, maximum
lengths and item counts are probed at the edge: the edge is accepted, one step past it refused.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from catalog.pipeline_config import VoicePipelineConfig

ROOT = Path(__file__).resolve().parents[1]
COPY = ROOT / "tests" / "contracts" / "voice-pipeline-config-create.json"
REFERENCE = ROOT.parent / "shared" / "reference" / "feather-api-v1.21-schemas.json"

SCHEMAS: dict[str, Any] = json.loads(COPY.read_text())["schemas"]
PROPERTIES: dict[str, Any] = SCHEMAS["VoicePipelineConfigCreate"]["properties"]
# ids of the platform's own records; a catalog file says what it belongs to by where it sits
NOT_BEHAVIOUR = {"agent_id", "team_id"}
BEHAVIOUR = sorted(set(PROPERTIES) - NOT_BEHAVIOUR)

# Where each field lands in our model (flat platform fields are folded into the nested ones).
WHERE: dict[str, Callable[[VoicePipelineConfig], Any]] = {
    "ai_disclosure_text": lambda c: c.first_speaking.ai_disclosure_text,
    "first_speaker": lambda c: c.first_speaking.first_speaker,
    "instructions": lambda c: c.first_speaking.instructions,
    "interruptible": lambda c: c.first_speaking.interruptible,
    "mode": lambda c: c.first_speaking.mode,
    "text": lambda c: c.first_speaking.text,
    "stt_provider": lambda c: c.stt_chain[0].provider,
    "stt_model": lambda c: c.stt_chain[0].model,
    "stt_provider_data": lambda c: c.stt_chain[0].provider_data,
    "tts_provider_data": lambda c: c.tts_chain[0].provider_data,
    "voice_id": lambda c: c.tts_chain[0].voice_id,
}

# Values with a meaning beyond the schema's type (a keypad key, a VAD dict); everything else is generated.
SAMPLES: dict[str, Any] = {
    "dtmf_termination_digit": "*",
    "local_vad_params": {"confidence": 0.5, "start_secs": 0.1, "stop_secs": 0.3, "min_volume": 0.2},
    "turn_analyzer_params": {"max_duration_secs": 10.0, "pre_speech_ms": 300.0, "stop_secs": 1.5},
    "pronunciation_overrides": {"SQL": "sequel"},
    "stt_provider_data": {"smart_format": True},
    "tts_provider_data": {"instructions": "Speak warmly."},
    "vad_provider_data": {"prefix_padding_duration": 0.3},
    "voice_tuning": {"instructions": "Calm and slow."},
    "voice_id": "nova",
    "persona_id": "3f0c1d2e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
    "stt_provider": "openai",
    "mode": "dynamic",
}
# Stricter than the platform's type, on purpose: a termination digit is a keypad key (0-9 * # A-D) or "" for none.
NARROWED = {"dtmf_termination_digit"}


def _resolve(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The non-null branch of an anyOf (with $ref resolved) and whether null is allowed."""
    nullable = False
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        nullable = len(branches) < len(schema["anyOf"])
        assert len(branches) == 1, schema
        schema = branches[0]
    if "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]]
    return schema, nullable


def _sample(name: str, schema: dict[str, Any]) -> Any:
    if name in SAMPLES:
        return SAMPLES[name]
    if "enum" in schema:
        return schema["enum"][-1]
    kind = schema.get("type")
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        return schema.get("maximum", schema.get("minimum", 1))
    if kind == "string":
        return "x" * min(schema.get("maxLength", 10), 10)
    if kind == "array":
        return ["hold on"]
    raise AssertionError(f"no sample for {name}: {schema}")


def _load(**fields: Any) -> VoicePipelineConfig:
    return VoicePipelineConfig.model_validate(fields)


def _read(config: VoicePipelineConfig, name: str) -> Any:
    return WHERE[name](config) if name in WHERE else getattr(config, name)


def _normal(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def test_fifty_behaviour_fields() -> None:
    assert len(BEHAVIOUR) == 50


@pytest.mark.skipif(not REFERENCE.is_file() and not os.environ.get("CI"), reason=f"{REFERENCE} is not there")
def test_the_copy_is_the_platform_reference() -> None:
    reference = json.loads(REFERENCE.read_text())["schemas"]
    for name, schema in SCHEMAS.items():
        assert reference[name] == schema, name


@pytest.mark.parametrize("name", BEHAVIOUR)
def test_accepted_under_its_own_name_and_kept(name: str) -> None:
    schema, _ = _resolve(PROPERTIES[name])
    value = _sample(name, schema)
    config = _load(**{name: value})
    assert _normal(_read(config, name)) == _normal(value)


@pytest.mark.parametrize("name", [n for n in BEHAVIOUR if _resolve(PROPERTIES[n])[1]])
def test_null_means_the_default(name: str) -> None:
    default = _read(VoicePipelineConfig(), name)
    assert _normal(_read(_load(**{name: None}), name)) == _normal(default)


@pytest.mark.parametrize("name", [n for n in BEHAVIOUR if "enum" in _resolve(PROPERTIES[n])[0]])
def test_every_enum_value_and_nothing_else(name: str) -> None:
    schema, _ = _resolve(PROPERTIES[name])
    for value in schema["enum"]:
        extra = {"text": "Hi"} if name == "first_speaker" else {}
        assert _read(_load(**{name: value}, **extra), name) == value
    with pytest.raises(ValidationError):
        _load(**{name: "not-a-" + name})


def _bounded(kind: str) -> list[str]:
    return [n for n in BEHAVIOUR if _resolve(PROPERTIES[n])[0].get("type") == kind]


@pytest.mark.parametrize("name", [n for n in _bounded("integer") + _bounded("number")])
def test_numeric_range_at_its_edges(name: str) -> None:
    schema, _ = _resolve(PROPERTIES[name])
    step = 1 if schema["type"] == "integer" else 0.01
    if "minimum" in schema:
        low = int(schema["minimum"]) if schema["type"] == "integer" else schema["minimum"]
        assert _read(_load(**{name: low}), name) == low
        with pytest.raises(ValidationError):
            _load(**{name: low - step})
    if "maximum" in schema:
        high = int(schema["maximum"]) if schema["type"] == "integer" else schema["maximum"]
        assert _read(_load(**{name: high}), name) == high
        with pytest.raises(ValidationError):
            _load(**{name: high + step})
    if "exclusiveMaximum" in schema:
        with pytest.raises(ValidationError):
            _load(**{name: schema["exclusiveMaximum"]})
        assert _load(**{name: schema["exclusiveMaximum"] - step})


@pytest.mark.parametrize("name", [n for n in _bounded("string") if "maxLength" in _resolve(PROPERTIES[n])[0]])
def test_string_length_at_its_edge(name: str) -> None:
    limit = _resolve(PROPERTIES[name])[0]["maxLength"]
    if name not in NARROWED:
        assert _read(_load(**{name: "a" * limit}), name) == "a" * limit
    with pytest.raises(ValidationError):
        _load(**{name: "a" * (limit + 1)})


@pytest.mark.parametrize("name", [n for n in _bounded("array") if "maxItems" in _resolve(PROPERTIES[n])[0]])
def test_list_length_at_its_edge(name: str) -> None:
    limit = _resolve(PROPERTIES[name])[0]["maxItems"]
    items = [f"phrase {i}" for i in range(limit)]
    assert list(_read(_load(**{name: items}), name)) == items
    with pytest.raises(ValidationError):
        _load(**{name: [*items, "one more"]})


@pytest.mark.parametrize("nested", ["LocalVADParams", "TurnAnalyzerParams"])
def test_nested_params_keep_the_platform_defaults_and_ranges(nested: str) -> None:
    field = "local_vad_params" if nested == "LocalVADParams" else "turn_analyzer_params"
    for key, schema in SCHEMAS[nested]["properties"].items():
        config = _load(**{field: {}})
        assert getattr(getattr(config, field), key) == schema["default"]
        for edge, past in (("minimum", -0.01), ("maximum", 0.01)):
            assert _load(**{field: {key: schema[edge]}})
            with pytest.raises(ValidationError):
                _load(**{field: {key: schema[edge] + past}})


def test_a_whole_platform_document_maps_without_loss() -> None:
    document = {name: _sample(name, _resolve(PROPERTIES[name])[0]) for name in BEHAVIOUR}
    document["first_speaker"] = "agent"
    config = _load(**document)
    for name, value in document.items():
        assert _normal(_read(config, name)) == _normal(value), name


def test_flat_fields_fill_the_primary_entry_of_an_explicit_chain() -> None:
    config = _load(
        stt_chain=[{"provider": "deepgram"}, {"provider": "openai"}],
        stt_model="nova-2",
        tts_chain=[{"provider": "openai", "model": "tts-1"}],
        voice_id="echo",
    )
    assert (config.stt_chain[0].provider, config.stt_chain[0].model) == ("deepgram", "nova-2")
    assert config.stt_chain[1].provider == "openai"
    assert (config.tts_chain[0].model, config.tts_chain[0].voice_id) == ("tts-1", "echo")


def test_a_flat_field_that_contradicts_the_chain_is_refused_naming_both() -> None:
    with pytest.raises(ValidationError, match=r"stt_provider 'openai' contradicts stt_chain\[0\].provider"):
        _load(stt_provider="openai", stt_chain=[{"provider": "deepgram"}])
    with pytest.raises(ValidationError, match=r"text 'Hi' contradicts first_speaking\.text"):
        _load(text="Hi", first_speaking={"text": "Hello"})


def test_another_stt_provider_does_not_inherit_the_default_model() -> None:
    config = _load(stt_provider="openai")
    assert (config.stt_chain[0].provider, config.stt_chain[0].model) == ("openai", None)
    assert _load(stt_model="nova-2").stt_chain[0].provider == "deepgram"


def test_flat_first_speaking_fields_merge_with_the_default_greeting() -> None:
    config = _load(ai_disclosure_text="This call is with an AI assistant.")
    assert config.first_speaking.ai_disclosure_text == "This call is with an AI assistant."
    assert config.first_speaking.text == VoicePipelineConfig().first_speaking.text


def test_the_docs_have_one_row_per_field_and_name_tests_that_exist() -> None:
    docs = (ROOT / "docs" / "pipeline-config.md").read_text()
    section = docs.split("## Every platform field", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = [row.split("`", 2)[1] for row in rows]
    assert named == BEHAVIOUR  # one row each, in the schema's (alphabetical) order
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 6, row
        proofs = re.findall(r"`(tests/[\w/]+\.py)`", cells[5])
        assert proofs, f"{named[rows.index(row)]}: no test named"
        for proof in proofs:
            assert (ROOT / proof).is_file(), proof
