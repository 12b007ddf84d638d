"""`voice-worker check` on platform fields: a provider-data typo fails the check naming the key; a field that
cannot apply where the worker runs is a warning naming the field, and warnings alone pass."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import main as cli
from contract.settings import EXAMPLE_CATALOG

KEYS = {"OPENAI_API_KEY": "sk-test-not-real", "DEEPGRAM_API_KEY": "dg-test-not-real"}


@pytest.fixture(autouse=True)
def dev_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/records.db")
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CATALOG_PATH", raising=False)


def catalog_with(tmp_path: Path, **pipeline: Any) -> Path:
    """The example catalog with fields added to the sales agent's pipeline."""
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target, ignore=shutil.ignore_patterns("scenarios"))
    document = yaml.safe_load((target / "sales.yaml").read_text())
    document["revisions"][0]["pipeline"].update(pipeline)
    (target / "sales.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def check(target: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = cli.main(["check", "--catalog", str(target)])
    return code, capsys.readouterr().out.strip().splitlines()


def test_warnings_name_the_field_and_do_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = catalog_with(
        tmp_path,
        noise_cancellation_enabled=True,
        voicemail_detection_mode="leave_message",
        voicemail_message="Please call us back.",
        dtmf_max_digits=6,
    )
    code, lines = check(target, capsys)
    assert code == 0, lines
    where = "warning: sales.yaml: revisions[0].pipeline"
    assert f"{where}.noise_cancellation_enabled: not applied: LiveKit's noise cancellation (BVC)" in "\n".join(lines)
    assert any(line.startswith(f"{where}.voicemail_detection_mode: applies to SIP callers only") for line in lines)
    assert f"{where}.dtmf_max_digits: has no effect: dtmf_enabled is false" in lines
    assert lines[-1].startswith("catalog OK: ")


def test_a_provider_data_typo_fails_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = catalog_with(tmp_path, stt_provider_data={"smart_formatting": True})
    code, lines = check(target, capsys)
    assert code == 1
    assert any(
        line.startswith("sales.yaml: revisions[0].pipeline.stt_chain[0].provider_data.smart_formatting: ")
        and "deepgram.STT takes no 'smart_formatting'" in line
        for line in lines
    ), lines


def test_platform_shaped_fields_check_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Flat platform fields in a catalog file: folded into the chains, nothing to warn about."""
    target = catalog_with(
        tmp_path,
        stt_provider="deepgram",
        stt_model="nova-3",
        first_speaker="agent",
        ai_disclosure_text="This call is with an AI assistant.",
        interruption_backoff_ms=800,
        background_audio_enabled=True,
        background_audio_preset="office",
    )
    code, lines = check(target, capsys)
    assert code == 0 and len(lines) == 1 and lines[0].startswith("catalog OK: "), lines
