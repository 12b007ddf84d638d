"""session_id, agent_id and job_id on every log record of a call.

`start_call` binds the call's fields in a contextvar; asyncio copies the context into every task created
afterwards, so the session's own tasks (livekit's included) log with them. `CallContextFilter`, installed on the
root handlers (`install()`: in each job process by the setup function, in the main process when the worker
starts), copies the bound fields onto each record that passes. In a job process the handler forwards the record
to the main process, whose JSON formatter writes every extra attribute, so the fields survive the hop.
Work that runs outside the call's task tree (shutdown callbacks) binds the fields again with `bound()`.

The main process supervises each job process and logs about it with the job's id only; `remember_job()` (called
by the dispatch gate when it accepts a job) lets the filter add the session and agent to those lines too.

Only identifiers are ever bound: nothing here can carry a secret into a log line.

The filter also names each record's logger as `logger`, so every JSON line has level, logger and message.
`install_json_logging()` gives a process that livekit's CLI does not set up (the door, the worker's own lines
before livekit starts) the same JSON lines: the formatter of telemetry/json_lines.py plus this filter.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping

from telemetry.json_lines import JsonLineFormatter

FIELDS = ("session_id", "agent_id", "job_id")
# Jobs remembered by the main process; the oldest are forgotten first (a job lasts minutes, this is days of calls).
MAX_REMEMBERED_JOBS = 10_000

_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "voice_worker_call_fields",
    default={},  # noqa: B039 - never mutated: a read-only Mapping, bind() sets a new dict
)
_jobs: OrderedDict[str, Mapping[str, str]] = OrderedDict()


def bind(**fields: str | None) -> contextvars.Token[Mapping[str, str]]:
    """Add fields (names from FIELDS) to the current context, keeping those already bound."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"not a call log field: {sorted(unknown)}")
    merged = {**_fields.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    return _fields.set(merged)


@contextlib.contextmanager
def bound(fields: Mapping[str, str]) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        _fields.reset(token)


def current() -> Mapping[str, str]:
    return _fields.get()


def remember_job(job_id: str, **fields: str) -> None:
    """Records that name this job (`job_id` attribute) get these fields as well."""
    _jobs[job_id] = {"job_id": job_id, **fields}
    _jobs.move_to_end(job_id)
    while len(_jobs) > MAX_REMEMBERED_JOBS:
        _jobs.popitem(last=False)


class CallContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # livekit's JSON formatter writes the logger as "name"; operators' queries use "logger".
        if not hasattr(record, "logger"):
            record.logger = record.name
        fields = _fields.get()
        if not fields:
            job_id = getattr(record, "job_id", None)
            fields = _jobs.get(job_id, {}) if isinstance(job_id, str) else {}
        for key, value in fields.items():
            # an explicit `extra=` wins
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


_filter = CallContextFilter()


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of `logger` (the root logger by default); safe to call again."""
    for handler in (logger or logging.getLogger()).handlers:
        if _filter not in handler.filters:
            handler.addFilter(_filter)


def install_json_logging(level: str | int = logging.INFO) -> logging.Handler:
    """One JSON object per line on stderr for every logger of this process; returns the handler it added."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    install(root)
    return handler
