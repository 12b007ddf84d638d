"""What every job process builds once (setup function) and every call then shares.

The VAD model, the catalog, the session store and the post-call processor are per process: nothing here
crosses a fork (a SQLAlchemy engine must not), and nothing is loaded while a caller waits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from catalog.loader import CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from pipelines.builder import BuiltPipeline, build_llm, build_pipeline
from pipelines.vad import SharedVAD
from postcall.memory import LLMMemoryExtractor
from postcall.outbox import OutboxDelivery
from postcall.processor import PostCallProcessor
from records.outcome import SessionOutcome
from records.store import SessionStore
from worker import metrics
from worker.call import CallServices
from worker.settings import Settings

log = logging.getLogger("voice_worker.services")


@dataclass
class ProcessServices(CallServices):
    """CallServices plus the post-call side, built once per job process."""

    postcall: PostCallProcessor | None = None
    delivery: OutboxDelivery | None = None


def build_process_services(settings: Settings, *, shared_vad: SharedVAD | None = None) -> ProcessServices:
    vad = shared_vad or SharedVAD.load()
    catalog = CatalogStore(settings.catalog_path)
    catalog.get()
    store = SessionStore.from_settings(settings)

    def session_parts(config: VoicePipelineConfig) -> BuiltPipeline:
        return build_pipeline(config, settings, vad=vad)

    def postcall_llm(outcome: SessionOutcome):  # noqa: ANN202 - an llm.LLM or None
        # "The model from the config": the call's own model chain (team or agent), built fresh and closed after.
        current = catalog.get()
        if outcome.team_id is not None and outcome.team_id in current.teams:
            return build_llm(current.teams[outcome.team_id].pipeline, settings)
        agent = current.agents.get(outcome.agent_id) if outcome.agent_id else None
        return build_llm(agent.active_revision.pipeline, settings) if agent else None

    delivery = OutboxDelivery.from_settings(store, settings, on_attempt=metrics.webhook_attempt)
    postcall = PostCallProcessor(
        store,
        settings,
        postcall_llm,
        LLMMemoryExtractor(postcall_llm),
        on_enqueued=delivery.notify if delivery else None,
    )
    return ProcessServices(
        settings=settings,
        catalog=catalog,
        session_kwargs=session_parts,
        store=store,
        postcall=postcall,
        delivery=delivery,
    )
