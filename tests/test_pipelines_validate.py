"""Bad pipeline configs are reported with the field and the reason, never a key's value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from catalog.loader import load_catalog
from catalog.pipeline_config import ModelChainEntry, STTEntry, TTSEntry, VoicePipelineConfig
from contract.settings import EXAMPLE_CATALOG
from pipelines.validate import pipeline_problems
from worker.settings import Settings

KEY_ENVS = ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "OPENAI_COMPATIBLE_API_KEY")


@pytest.fixture(autouse=True)
def _no_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in KEY_ENVS:
        monkeypatch.delenv(env, raising=False)


def all_keys() -> Settings:
    return Settings(_env_file=None, OPENAI_API_KEY="sk-secret-openai", DEEPGRAM_API_KEY="dg-secret")


def problems_of(config: VoicePipelineConfig, settings: Settings | None = None) -> list[tuple[str, str]]:
    found = pipeline_problems(config, settings or all_keys(), where="pipeline")
    return [(p.field, p.reason) for p in found]


def test_example_catalog_has_no_pipeline_problems() -> None:
    catalog = load_catalog(Path(EXAMPLE_CATALOG))
    configs = [a.active_revision.pipeline for a in catalog.agents.values()]
    configs += [t.pipeline for t in catalog.teams.values()]
    assert len(configs) == 3
    for config in configs:
        assert problems_of(config) == []


def test_unknown_provider_names_the_known_ones() -> None:
    config = VoicePipelineConfig(
        model_chain=[ModelChainEntry(model="gpt-4.1-mini"), ModelChainEntry(model="claude", provider="anthropic")]
    )
    assert problems_of(config) == [
        ("pipeline.model_chain[1].provider", "unknown provider 'anthropic' (known: openai, openai_compatible)")
    ]


def test_provider_without_the_kind() -> None:
    config = VoicePipelineConfig(model_chain=[ModelChainEntry(model="nova-3", provider="deepgram")])
    assert problems_of(config) == [
        (
            "pipeline.model_chain[0].provider",
            "provider 'deepgram' offers no LLM (providers with LLM: openai, openai_compatible)",
        )
    ]


def test_missing_keys_name_the_variable_for_each_use() -> None:
    settings = Settings(_env_file=None)
    assert problems_of(VoicePipelineConfig(), settings) == [
        ("pipeline.stt_chain[0].provider", "provider 'deepgram' needs an API key: set DEEPGRAM_API_KEY"),
        ("pipeline.model_chain[0].provider", "provider 'openai' needs an API key: set OPENAI_API_KEY"),
        ("pipeline.tts_chain[0].provider", "provider 'openai' needs an API key: set OPENAI_API_KEY"),
    ]


def test_problems_never_contain_key_values() -> None:
    config = VoicePipelineConfig(
        stt_chain=[STTEntry(provider="whisperx")],
        model_chain=[ModelChainEntry(model="m", provider="openai_compatible")],
        tts_chain=[TTSEntry(provider="deepgram", model="aura-2-thalia-en", voice_id="thalia")],
        tts_speed=3.0,
    )
    text = " ".join(f"{field} {reason}" for field, reason in problems_of(config))
    assert text  # there are problems to look at
    assert "sk-secret-openai" not in text and "dg-secret" not in text


def test_openai_compatible_needs_base_url_but_no_key() -> None:
    config = VoicePipelineConfig(model_chain=[ModelChainEntry(model="llama3.2:3b", provider="openai_compatible")])
    assert problems_of(config) == [
        (
            "pipeline.model_chain[0].base_url",
            "provider 'openai_compatible' needs base_url (the server's OpenAI-compatible /v1 URL)",
        )
    ]
    with_url = VoicePipelineConfig(
        model_chain=[ModelChainEntry(model="llama3.2:3b", provider="openai_compatible", base_url="http://gpu:11434/v1")]
    )
    assert problems_of(with_url) == []


def test_malformed_base_url() -> None:
    config = VoicePipelineConfig(
        model_chain=[ModelChainEntry(model="m", provider="openai_compatible", base_url="localhost:11434/v1")]
    )
    assert problems_of(config) == [
        ("pipeline.model_chain[0].base_url", "base_url 'localhost:11434/v1' is not an absolute http / https URL")
    ]


def test_tts_speed_outside_the_provider_range() -> None:
    config = VoicePipelineConfig(tts_chain=[TTSEntry(provider="deepgram", model="aura-2-thalia-en")], tts_speed=2.0)
    assert problems_of(config) == [
        ("pipeline.tts_speed", "2.0 is outside 'deepgram''s range 0.7..1.5 (used by tts_chain[0])")
    ]
    # the same speed is fine for OpenAI's voices
    assert problems_of(config.model_copy(update={"tts_chain": (TTSEntry(provider="openai"),)})) == []


def test_deepgram_voice_and_model_must_agree() -> None:
    config = VoicePipelineConfig(
        tts_chain=[TTSEntry(provider="deepgram", model="aura-2-thalia-en", voice_id="aura-2-orion-en")]
    )
    [(field, reason)] = problems_of(config)
    assert field == "pipeline.tts_chain[0].voice_id"
    assert "disagree" in reason


def test_turn_detector_language_support() -> None:
    config = VoicePipelineConfig(turn_detection="turn_detector", language="sv")
    assert problems_of(config) == [
        (
            "pipeline.turn_detection",
            "the offline turn-detector model has no support for language 'sv'; use turn_detection vad or stt",
        )
    ]
    assert problems_of(config.model_copy(update={"language": "en-US"})) == []


def test_speak_then_hangup_needs_an_end_message() -> None:
    config = VoicePipelineConfig(silence_timeout_ms=10_000, silence_end_action="speak_then_hangup")
    assert problems_of(config) == [
        (
            "pipeline.silence_end_message",
            "silence_end_action speak_then_hangup needs silence_end_message "
            "(or use silence_end_action hangup_immediate)",
        )
    ]
    assert problems_of(config.model_copy(update={"silence_end_action": "hangup_immediate"})) == []


def test_where_prefixes_the_field_path() -> None:
    config = VoicePipelineConfig(stt_chain=[STTEntry(provider="nope")])
    [problem] = pipeline_problems(config, all_keys(), where="revisions[0].pipeline")
    assert problem.field == "revisions[0].pipeline.stt_chain[0].provider"
    assert str(problem).startswith("revisions[0].pipeline.stt_chain[0].provider: unknown provider 'nope'")


@pytest.mark.parametrize(
    ("override", "loc", "message"),
    [
        ({"endpointing_min_delay_ms": -100}, ("endpointing_min_delay_ms",), "greater than or equal to 0"),
        ({"local_vad_params": {"confidence": 1.5}}, ("local_vad_params", "confidence"), "less than or equal to 1"),
        ({"tts_chain": []}, ("tts_chain",), "at least 1 item"),
    ],
)
def test_range_errors_are_rejected_at_load_with_the_field_path(override, loc, message) -> None:
    with pytest.raises(ValidationError) as err:
        VoicePipelineConfig.model_validate(override)
    [error] = err.value.errors()
    assert error["loc"] == loc
    assert message in error["msg"]


def test_catalog_loader_reports_file_field_and_reason(tmp_path: Path) -> None:
    agent = yaml.safe_load((Path(EXAMPLE_CATALOG) / "sales.yaml").read_text())
    pipeline = agent["revisions"][0]["pipeline"]
    pipeline["endpointing_min_delay_ms"] = -1
    pipeline["local_vad_params"] = {"confidence": 1.2}
    (tmp_path / "sales.yaml").write_text(yaml.safe_dump(agent))

    catalog = load_catalog(tmp_path)
    problems = {(p.file, p.field) for p in catalog.problems}
    assert {
        ("sales.yaml", "revisions[0].pipeline.endpointing_min_delay_ms"),
        ("sales.yaml", "revisions[0].pipeline.local_vad_params.confidence"),
    } <= problems
    assert catalog.agents == {}
