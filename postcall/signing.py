"""Webhook signatures: HMAC-SHA256 over the timestamp and the raw body.

Headers sent with every delivery:
  X-Voice-Worker-Timestamp: <unix seconds when this attempt was signed>
  X-Voice-Worker-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>
  Idempotency-Key: <session id>
The timestamp is inside the signed bytes, so a receiver that rejects timestamps older than a few minutes
cannot be fed a captured request again; the idempotency key lets it drop a retry of a delivery it already
processed (the sender retries whenever it did not see the 2xx).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Voice-Worker-Timestamp"
SIGNATURE_HEADER = "X-Voice-Worker-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


def signed_headers(secret: bytes, body: bytes, *, idempotency_key: str, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        IDEMPOTENCY_HEADER: idempotency_key,
    }


def verify(
    secret: bytes,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """For receivers: the signature matches and the timestamp is within `tolerance_s` of `now`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ts, given = lowered.get(TIMESTAMP_HEADER.lower()), lowered.get(SIGNATURE_HEADER.lower())
    if raw_ts is None or given is None or not raw_ts.isdigit():
        return False
    timestamp = int(raw_ts)
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), given)
