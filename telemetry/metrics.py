"""The worker's Prometheus metrics (`voice_worker_*`), recorded in the main process and in every job process.

`voice-worker start|dev` runs prometheus_client in multiprocess mode: cli/worker_commands.py sets
PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client, every process writes its samples to files
there, and the worker's endpoint (worker/metrics_endpoint.py, GET /metrics on PROMETHEUS_PORT) adds them up with
a MultiProcessCollector (`exposition()`). The metric objects are created on first use, never at import: a module
imported before the directory is known (the forkserver preloads some) must not fix a metric to the wrong mode.
Without the directory (tests, the console) they live in the process's default registry, which the same endpoint
then serves.

Labels stay bounded: session types, the platform's end reasons, refusal reasons and procedure decision reasons
are closed vocabularies; provider names come from the catalog.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("voice_worker.metrics")

# Voice turn latencies: what a caller notices starts around half a second.
_TURN_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_ROUTER_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

# ChatMessage.metrics keys (livekit-agents 1.8, as calls/history.py reads them) → histogram attribute.
_TURN_FIGURES = {
    "e2e_latency": "turn_end_of_speech_to_first_audio",
    "llm_node_ttft": "turn_llm_ttft",
    "tts_node_ttfb": "turn_tts_ttfb",
}


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.active_calls: Gauge = Gauge(
            "voice_worker_active_calls",
            "Calls in progress, by session type",
            ["session_type"],
            # the sum over the job processes that are alive (a dead one is dropped by mark_process_dead)
            multiprocess_mode="livesum",
        )
        self.calls: Counter = Counter(
            "voice_worker_calls",
            "Calls ended, by session type and end reason",
            ["session_type", "end_reason"],
        )
        self.dispatch_accepted: Counter = Counter(
            "voice_worker_dispatch_accepted", "Job offers accepted (signed dispatch verified and admitted)"
        )
        self.dispatch_refusals: Counter = Counter(
            "voice_worker_dispatch_refusals",
            "Job offers refused, by reason (dispatch contract reasons, draining, at_capacity)",
            ["reason"],
        )
        self.turn_end_of_speech_to_first_audio: Histogram = Histogram(
            "voice_worker_turn_end_of_speech_to_first_audio_seconds",
            "Per turn: end of the caller's speech to the agent's first audio",
            buckets=_TURN_BUCKETS,
        )
        self.turn_llm_ttft: Histogram = Histogram(
            "voice_worker_turn_llm_ttft_seconds", "Per turn: LLM time to first token", buckets=_TURN_BUCKETS
        )
        self.turn_tts_ttfb: Histogram = Histogram(
            "voice_worker_turn_tts_ttfb_seconds", "Per turn: TTS time to first byte", buckets=_TURN_BUCKETS
        )
        self.procedure_selections: Counter = Counter(
            "voice_worker_procedure_selections",
            "Procedure decisions, by reason (keyword, router, router_none, router_timeout, ...)",
            ["reason"],
        )
        self.router_latency: Histogram = Histogram(
            "voice_worker_router_latency_seconds",
            "Latency of the procedure router's decision, when a router ran",
            buckets=_ROUTER_BUCKETS,
        )
        self.provider_fallbacks: Counter = Counter(
            "voice_worker_provider_fallbacks",
            "A provider in a fallback chain was marked unavailable (its traffic moved to the next one)",
            ["kind", "provider"],
        )
        self.provider_recoveries: Counter = Counter(
            "voice_worker_provider_recoveries",
            "A provider in a fallback chain that had been marked unavailable answered again",
            ["kind", "provider"],
        )
        self.postcall_processed: Counter = Counter(
            "voice_worker_postcall_processed",
            "Post-call processing runs, by result: ok, degraded (a step failed, the record was kept), failed",
            ["result"],
        )
        self.outbox_backlog: Gauge = Gauge(
            "voice_worker_postcall_outbox_backlog",
            "Session webhooks queued and not yet acknowledged",
            # only the main process sets it: what the last reading said
            multiprocess_mode="max",
        )
        self.webhook_delivered: Counter = Counter(
            "voice_worker_postcall_webhook_delivered", "Session webhooks acknowledged with a 2xx"
        )
        self.webhook_failures: Counter = Counter(
            "voice_worker_postcall_webhook_failures", "Session webhook attempts that failed (retried later)"
        )
        self.webhook_retries: Counter = Counter(
            "voice_worker_postcall_webhook_retries", "Session webhook attempts after the first for the same session"
        )
        self.webhook_parked: Counter = Counter(
            "voice_worker_postcall_webhook_parked",
            "Session webhooks given up on after OUTBOX_MAX_ATTEMPTS or OUTBOX_MAX_AGE_S (voice-worker outbox resend)",
        )
        self.outbox_parked: Gauge = Gauge(
            "voice_worker_postcall_outbox_parked",
            "Session webhooks parked and not re-sent yet (alert when above 0)",
            multiprocess_mode="max",
        )


@functools.cache
def metrics() -> _Metrics:
    """The metric objects of this process, created on first use (see the module docstring)."""
    return _Metrics()


# --- calls --------------------------------------------------------------------------------------------------


def call_started(session_type: str) -> None:
    metrics().active_calls.labels(session_type=session_type).inc()


def call_ended(session_type: str, end_reason: str, decisions: Iterable[Any] = ()) -> None:
    """Once per call, when it ends; `decisions` are the call's procedures.supervisor.ProcedureDecision."""
    m = metrics()
    m.active_calls.labels(session_type=session_type).dec()
    m.calls.labels(session_type=session_type, end_reason=end_reason).inc()
    for decision in decisions:
        m.procedure_selections.labels(reason=decision.reason).inc()
        if decision.router_latency_ms is not None:
            m.router_latency.observe(decision.router_latency_ms / 1000)


def observe_turn(figures: dict[str, Any]) -> None:
    """An assistant `ChatMessage.metrics` report: observe the latencies it carries (seconds)."""
    m = metrics()
    for key, attribute in _TURN_FIGURES.items():
        value = figures.get(key)
        if isinstance(value, int | float) and value >= 0:
            getattr(m, attribute).observe(float(value))


def watch_fallbacks(*components: Any) -> None:
    """Count availability changes of every FallbackAdapter among a call's STT, LLM and TTS."""
    for component in components:
        kind = _fallback_kind(component)
        if kind is not None:
            component.on(f"{kind}_availability_changed", _availability_counter(kind))


def _availability_counter(kind: str) -> Callable[[Any], None]:
    def on_change(event: Any) -> None:
        # livekit's AvailabilityChangedEvent names the provider in the attribute `stt`, `llm` or `tts`
        provider = _provider_name(getattr(event, kind, None))
        counter = metrics().provider_recoveries if event.available else metrics().provider_fallbacks
        counter.labels(kind=kind, provider=provider).inc()

    return on_change


def _fallback_kind(component: Any) -> str | None:
    from livekit.agents import llm, stt, tts

    for kind, module in (("stt", stt), ("llm", llm), ("tts", tts)):
        if isinstance(component, module.FallbackAdapter):
            return kind
    return None


def _provider_name(component: Any) -> str:
    try:
        return str(component.provider)
    except Exception:  # a plugin without a provider name must not break the count
        return "unknown"


# --- dispatch -------------------------------------------------------------------------------------------------


def dispatch_accepted() -> None:
    metrics().dispatch_accepted.inc()


def dispatch_refused(reason: str) -> None:
    metrics().dispatch_refusals.labels(reason=reason).inc()


# --- post-call ------------------------------------------------------------------------------------------------


def postcall_processed(result: str) -> None:
    metrics().postcall_processed.labels(result=result).inc()


def webhook_attempt(attempt: int, delivered: bool) -> None:
    """postcall.outbox's attempt observer: `attempt` counts from 1 for each session's webhook."""
    m = metrics()
    (m.webhook_delivered if delivered else m.webhook_failures).inc()
    if attempt > 1:
        m.webhook_retries.inc()


def outbox_backlog(undelivered: int) -> None:
    metrics().outbox_backlog.set(undelivered)


def webhook_parked() -> None:
    """postcall.outbox's park observer."""
    metrics().webhook_parked.inc()


def outbox_parked(parked: int) -> None:
    metrics().outbox_parked.set(parked)


# --- processes and exposition ----------------------------------------------------------------------------------

# In multiprocess mode a scrape reads every process's file while the files of an ended job process are folded and
# removed; the lock makes each scrape see either the files before or after a fold, never a mix (a counter seen
# twice, or not at all, for one scrape reads as a counter reset and spikes every rate()).
_files_lock = threading.Lock()
# The file that keeps the counters and histograms of ended processes ("<type>_archive.db"; the collector sums
# counter and histogram files whatever their pid part).
_ARCHIVE = "archive"


def exposition() -> bytes:
    """What GET /metrics serves: the samples of every process in multiprocess mode, else this process's."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=True)
    multiprocess.MultiProcessCollector(registry, path=directory)
    with _files_lock:
        # a job process that ended since the last scrape (or crashed) leaves no live gauge behind in this one
        _fold_ended(directory)
        return generate_latest(registry)


def fold_ended_processes() -> None:
    """Multiprocess mode: for every job process that has ended, drop its live gauges, so a crashed call does not
    stay active, and fold its counters and histograms into the archive files, so that the directory, and with it
    the time a scrape takes, does not grow with every call (livekit runs one process per job). Each scrape does
    it first; the metrics endpoint also does it between scrapes, for when nothing scrapes."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        with _files_lock:
            _fold_ended(directory)


def _fold_ended(directory: str) -> None:
    """Under the lock. A process's files are named `<kind>[_<mode>]_<pid>.db` (prometheus_client); the archive's
    `_archive.db` is not a pid. Which processes ended is read from the files and the system, not from livekit's
    process pool: the files are what must be folded, and a process that is gone is gone however it ended."""
    pids: set[int] = set()
    for name in os.listdir(directory):
        stem, _, suffix = name.rpartition("_")
        number = suffix.removesuffix(".db")
        if stem and name.endswith(".db") and number.isdigit():
            pids.add(int(number))
    for pid in sorted(pids - {os.getpid()}):
        if not _alive(pid):
            _fold_process(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the pid: ours has ended
        return False
    return True


def _fold_process(pid: int, directory: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)
    for kind in ("counter", "histogram"):
        _fold(os.path.join(directory, f"{kind}_{pid}.db"), os.path.join(directory, f"{kind}_{_ARCHIVE}.db"))


def _fold(ended: str, archive_path: str) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    if not os.path.exists(ended):
        return
    archive = MmapedDict(archive_path)
    try:
        totals = {key: value for key, value, _ in archive.read_all_values()}
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(ended):
            archive.write_value(key, totals.get(key, 0.0) + value, timestamp)
    finally:
        archive.close()
    os.remove(ended)
