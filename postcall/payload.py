"""The webhook body: what the platform receives for each finished session, and its exact bytes.

The body is canonical JSON (sorted keys, no insignificant whitespace, UTF-8), so the bytes signed at
delivery are a pure function of the stored payload, whichever database kept it.
"""

from __future__ import annotations

import json
from typing import Any

from records.record import SessionRecord

EVENT_SESSION_COMPLETED = "session.completed"
PAYLOAD_VERSION = 1


def webhook_payload(record: SessionRecord) -> dict[str, Any]:
    return {
        "event": EVENT_SESSION_COMPLETED,
        "version": PAYLOAD_VERSION,
        "session_id": str(record.id),
        "session": record.model_dump(mode="json"),
    }


def encode_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
