"""What a job executor's setup function builds (worker/services.py): one VAD model and one catalog per process,
every catalog pipeline prebuilt (a pipeline this worker cannot build is skipped, not fatal), and the collector
frozen once."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from worker.services import freeze_once, prebuild_pipelines, process_catalog, process_vad
from worker.settings import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "catalog" / "examples"


def test_the_vad_model_and_the_catalog_are_per_process() -> None:
    assert process_vad() is process_vad()
    assert process_catalog(EXAMPLES) is process_catalog(EXAMPLES)


def test_every_distinct_catalog_pipeline_is_prebuilt() -> None:
    catalog = process_catalog(EXAMPLES)
    keys = Settings(_env_file=None, OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY="dg-test-not-real")
    current = catalog.get()
    distinct = {a.active_revision.pipeline.model_dump_json() for a in current.agents.values()} | {
        t.pipeline.model_dump_json() for t in current.teams.values()
    }
    assert prebuild_pipelines(catalog, keys, process_vad()) == len(distinct) >= 3


def test_a_pipeline_without_its_keys_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "OPENAI_COMPATIBLE_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    # every example pipeline names Deepgram or OpenAI: without keys none can be built, and setup goes on
    assert prebuild_pipelines(process_catalog(EXAMPLES), Settings(_env_file=None), process_vad()) == 0


async def test_prebuilding_from_async_code_closes_what_it_built() -> None:
    keys = Settings(_env_file=None, OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY="dg-test-not-real")
    assert prebuild_pipelines(process_catalog(EXAMPLES), keys, process_vad()) >= 3


def test_the_collector_is_frozen_once() -> None:
    freeze_once()
    assert gc.get_freeze_count() > 0
    assert freeze_once() is False


def test_every_template_of_the_catalog_is_compiled_in_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    from procedures.templates import _compile, precompile
    from worker.services import catalog_templates

    for env in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "OPENAI_COMPATIBLE_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    sources = catalog_templates(process_catalog(EXAMPLES).get())
    assert len(sources) >= 5 and any("{{" in source for source in sources)
    _compile.cache_clear()
    # templates are compiled even where no pipeline can be built
    prebuild_pipelines(process_catalog(EXAMPLES), Settings(_env_file=None), process_vad())
    assert _compile.cache_info().currsize == len(sources)
    assert precompile("{{ unclosed") is False


def test_the_turn_detector_is_loaded_in_setup_only_when_a_pipeline_uses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    import worker.services as services

    loads: list[bool] = []
    monkeypatch.setattr(services, "prewarm_turn_detector", lambda: loads.append(True))
    keys = Settings(_env_file=None, OPENAI_API_KEY="sk-test-not-real", DEEPGRAM_API_KEY="dg-test-not-real")
    prebuild_pipelines(process_catalog(EXAMPLES), keys, process_vad())
    assert loads == []  # every example pipeline ends turns on the VAD
    catalog_dir = tmp_path / "catalog"
    shutil.copytree(EXAMPLES, catalog_dir)
    sales = catalog_dir / "sales.yaml"
    sales.write_text(sales.read_text().replace("turn_detection: vad", "turn_detection: turn_detector"))
    prebuild_pipelines(process_catalog(catalog_dir), keys, process_vad())
    assert loads == [True]


def test_the_warm_up_runs_once_per_process_and_catalog(tmp_path: Path) -> None:
    from worker.services import _first_setup

    # the thread executor runs the setup function for every executor thread, beside live calls
    assert _first_setup(tmp_path) is True
    assert _first_setup(tmp_path) is False
    assert _first_setup(tmp_path / "other") is True


async def test_the_webhook_client_uses_the_process_tls_context(tmp_path: Path) -> None:
    # one CA bundle load per process: a context of its own cost every worker start 50-80 ms of its setup
    from pipelines.http_clients import tls_context
    from worker.services import build_process_services

    settings = Settings(
        _env_file=None,
        CATALOG_PATH=str(EXAMPLES),
        DATABASE_URL=f"sqlite:///{tmp_path / 'records.db'}",
        POSTCALL_WEBHOOK_URL="https://hooks.example.test/calls",
        POSTCALL_WEBHOOK_SECRET="webhook-secret-for-tests-0123456789",
        OPENAI_API_KEY="sk-test-not-real",
        DEEPGRAM_API_KEY="dg-test-not-real",
    )
    services = build_process_services(settings)
    assert services.delivery is not None
    try:
        assert services.delivery._client._transport._pool._ssl_context is tls_context()
    finally:
        await services.delivery.aclose()
        await services.store.aclose()
