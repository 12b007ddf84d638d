"""What every job executor builds once (livekit's setup function) and every call then shares.

Nothing here crosses a fork (a SQLAlchemy engine must not), and nothing is loaded while a caller waits.
- Per process (`process_vad`, `process_catalog`): the VAD model and the catalog, read-only and thread-safe.
  With JOB_EXECUTOR=thread every call is a thread of one process and its setup function runs once per
  executor thread: they all share one copy instead of loading their own.
- Per executor: the session store and the post-call side, whose async engine and HTTP clients belong to the
  event loop of the executor that uses them.
Every pipeline of the catalog is also built once and thrown away (`prebuild_pipelines`): the first build of
a process pays for first-use imports and caches (the TLS context, anyio, httpcore: 80-150 ms in
benchmarks/call_start.py), which would otherwise land on the first caller's greeting. Once the first setup
of a process is done, `freeze_once` moves everything it loaded out of the garbage collector's way.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit.agents import llm

from calls.call import CallServices
from catalog.loader import Catalog, CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from pipelines import speaking_rate
from pipelines.builder import BuiltPipeline, PipelineError, build_llm, build_pipeline
from pipelines.http_clients import tls_context
from pipelines.turn_handling import prewarm_turn_detector
from pipelines.vad import SharedVAD
from postcall.memory import LLMMemoryExtractor
from postcall.outbox import OutboxDelivery
from postcall.processor import PostCallProcessor
from procedures.templates import precompile
from records.outcome import SessionOutcome
from records.store import SessionStore
from telemetry import metrics
from worker.settings import Settings

log = logging.getLogger("voice_worker.services")


@dataclass
class ProcessServices(CallServices):
    """CallServices plus the post-call side, built once per job process."""

    postcall: PostCallProcessor | None = None
    delivery: OutboxDelivery | None = None


_process_lock = threading.Lock()
_process_vad: SharedVAD | None = None
_process_catalogs: dict[Path, CatalogStore] = {}
_frozen = False
_warmed: set[Path] = set()


def process_vad() -> SharedVAD:
    """The process's VAD model, loaded by the first caller."""
    global _process_vad
    with _process_lock:
        if _process_vad is None:
            _process_vad = SharedVAD.load()
        return _process_vad


def process_catalog(directory: Path) -> CatalogStore:
    """The process's view of the catalog in `directory` (it reloads itself when the files change)."""
    with _process_lock:
        if directory not in _process_catalogs:
            _process_catalogs[directory] = CatalogStore(directory)
        return _process_catalogs[directory]


def freeze_once() -> bool:
    """`gc.freeze()` after the first setup of the process; True if this call froze.

    What the process has loaded by then (imports, models, catalog) lives as long as the process: frozen, the
    collector stops traversing it on every collection (the stock baseline saw 100-166 ms collector pauses past
    15 calls per process) and a forked job process stops writing to its shared pages. Only the first time:
    later setups (thread executor) run beside live calls, whose objects must stay collectable."""
    global _frozen
    with _process_lock:
        if _frozen:
            return False
        # The young generations only: the old one holds the ~270k objects imports made, which a full collection
        # walks in 150-180 ms on the critical path of every start (livekit registers after the setup), and finds
        # no garbage there (0 objects freed, measured after importing the call path)
        gc.collect(1)
        gc.freeze()
        _frozen = True
        return True


def catalog_templates(current: Catalog) -> set[str]:
    """Every template source a call of this catalog may render: system prompts, procedure steps, greetings."""
    revisions = [agent.active_revision for agent in current.agents.values()]
    sources = {revision.system_prompt for revision in revisions}
    sources |= {procedure.instructions for revision in revisions for procedure in revision.procedures}
    for pipeline in [revision.pipeline for revision in revisions] + [team.pipeline for team in current.teams.values()]:
        first = pipeline.first_speaking
        sources |= {text for text in (first.text, first.instructions, first.ai_disclosure_text) if text}
    return sources


def prebuild_pipelines(catalog: CatalogStore, settings: Settings, vad: SharedVAD) -> int:
    """Build and close every pipeline the catalog names (active revisions and teams), and compile every
    template it holds; returns how many pipelines were built. Synchronous, as livekit's setup function is (no
    event loop runs in this thread yet).

    A pipeline this worker cannot build (a key it lacks) is skipped: the request handler refuses its
    dispatches with the reason, which is where an operator looks for it."""
    current = catalog.get()
    for source in catalog_templates(current):
        precompile(source)
    pipelines = [agent.active_revision.pipeline for agent in current.agents.values()]
    pipelines += [team.pipeline for team in current.teams.values()]
    configs = {config.model_dump_json(): config for config in pipelines}
    if any(config.turn_detection == "turn_detector" for config in configs.values()):
        # loaded here whether or not livekit's warm-up did (LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE=0 skips it)
        prewarm_turn_detector()
    built: list[BuiltPipeline] = []
    for config in configs.values():
        try:
            built.append(build_pipeline(config, settings, vad=vad))
        except PipelineError as exc:
            log.debug("pipeline not prebuilt: %s", exc)

    async def close() -> None:
        await asyncio.gather(*(b.aclose() for b in built), return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(close())
    else:  # called from async code (tests, an embedding program): close on a loop of its own, off this one
        with ThreadPoolExecutor(1, thread_name_prefix="prebuild-close") as pool:
            pool.submit(asyncio.run, close()).result()
    return len(built)


def _first_setup(directory: Path) -> bool:
    """True once per process and catalog: the warm-up is process-wide, and with the thread executor the setup
    function runs again for every executor thread, beside live calls."""
    with _process_lock:
        first = directory not in _warmed
        _warmed.add(directory)
        return first


def build_process_services(settings: Settings, *, shared_vad: SharedVAD | None = None) -> ProcessServices:
    started = time.perf_counter()
    # livekit's transcript synchronizer, its per-call speaking-rate STFT batched (pipelines/speaking_rate.py)
    speaking_rate.install()
    vad = shared_vad or process_vad()
    catalog = process_catalog(settings.catalog_path)
    prebuilt = prebuild_pipelines(catalog, settings, vad) if _first_setup(settings.catalog_path) else 0
    store = SessionStore.from_settings(settings)

    def session_parts(config: VoicePipelineConfig) -> BuiltPipeline:
        return build_pipeline(config, settings, vad=vad)

    def postcall_llm(outcome: SessionOutcome) -> llm.LLM[Any] | None:
        # "The model from the config": the call's own model chain (team or agent), built fresh and closed after.
        current = catalog.get()
        if outcome.team_id is not None and outcome.team_id in current.teams:
            return build_llm(current.teams[outcome.team_id].pipeline, settings)
        agent = current.agents.get(outcome.agent_id) if outcome.agent_id else None
        return build_llm(agent.active_revision.pipeline, settings) if agent else None

    delivery = OutboxDelivery.from_settings(
        store, settings, verify=tls_context(), on_attempt=metrics.webhook_attempt, on_parked=metrics.webhook_parked
    )
    postcall = PostCallProcessor(
        store,
        settings,
        postcall_llm,
        LLMMemoryExtractor(postcall_llm),
        on_enqueued=delivery.notify if delivery else None,
    )
    log.info(
        "job executor ready in %.0f ms: %d pipelines prebuilt, catalog %s",
        (time.perf_counter() - started) * 1000,
        prebuilt,
        settings.catalog_path,
    )
    return ProcessServices(
        settings=settings,
        catalog=catalog,
        session_kwargs=session_parts,
        store=store,
        postcall=postcall,
        delivery=delivery,
    )
