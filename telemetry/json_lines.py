"""One JSON object per log record, for the processes livekit's CLI does not set up (the door, the worker's own lines
before livekit's `start` command takes over its logging).

The keys are the ones livekit's JSON formatter writes for the worker's lines (tests/test_livekit_internals.py
compares them), so one query reads the door's and the worker's logs alike: level, name, message, every extra
attribute of the record (session_id, agent_id, job_id, logger: telemetry/logcontext.py), the exception, pid, the
code location and an ISO-8601 UTC timestamp.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# The attributes every LogRecord has; anything else on a record is an extra worth writing.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"level": record.levelname, "name": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        line.setdefault("pid", record.process)
        line.setdefault("code.file.path", record.pathname)
        line.setdefault("code.function.name", record.funcName)
        line.setdefault("code.line.number", record.lineno)
        line["timestamp"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat()
        return json.dumps(line, default=_text, ensure_ascii=False)


def _text(value: object) -> str:
    # an extra json cannot encode (an exception, a datetime, a path) is written as its text
    try:
        return value.isoformat() if isinstance(value, datetime) else str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
