"""The memory merge rule, as a pure function the store applies inside one transaction.

Facts are deduplicated case-insensitively (after collapsing whitespace); a fact seen again takes the newest
wording and a fresh `last_seen_at` but keeps its `created_at`. Facts not seen for `retention` are dropped.
The cap keeps the newest: this call's facts first (in the extractor's order), then the rest by
`last_seen_at`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MAX_FACT_CHARS = 500
_WHITESPACE = re.compile(r"\s+")


def normalize_fact(text: str) -> str | None:
    cleaned = _WHITESPACE.sub(" ", text).strip()
    if not cleaned:
        return None
    return cleaned[:MAX_FACT_CHARS].rstrip()


def fact_key(normalized: str) -> str:
    return hashlib.sha256(normalized.casefold().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredFact:
    id: int
    key: str
    fact: str
    created_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True)
class MergePlan:
    inserts: list[tuple[str, str]] = field(default_factory=list)  # (key, fact)
    updates: list[tuple[int, str]] = field(default_factory=list)  # (id, newest wording)
    deletes: list[int] = field(default_factory=list)


def dedupe(facts: Iterable[str]) -> list[tuple[str, str]]:
    """(key, normalized text) pairs, first occurrence wins: one extraction has one timestamp."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for raw in facts:
        text = normalize_fact(raw)
        if text is None:
            continue
        key = fact_key(text)
        if key not in seen:
            seen.add(key)
            out.append((key, text))
    return out


def plan_merge(
    existing: Sequence[StoredFact],
    new_facts: Iterable[str],
    *,
    cap: int,
    now: datetime,
    retention: timedelta,
) -> MergePlan:
    if cap < 1:
        raise ValueError("cap must be at least 1")
    cutoff = now - retention
    expired = [f.id for f in existing if f.last_seen_at < cutoff]
    alive = {f.key: f for f in existing if f.last_seen_at >= cutoff}

    fresh = dedupe(new_facts)[:cap]
    fresh_keys = {key for key, _ in fresh}
    updates = [(alive[key].id, text) for key, text in fresh if key in alive]
    inserts = [(key, text) for key, text in fresh if key not in alive]

    untouched = sorted(
        (f for key, f in alive.items() if key not in fresh_keys),
        # newest first; within one extraction, the extractor's order (insertion order) decides
        key=lambda f: (f.last_seen_at, -f.id),
        reverse=True,
    )
    over_cap = [f.id for f in untouched[cap - len(fresh) :]]
    return MergePlan(inserts=inserts, updates=updates, deletes=expired + over_cap)
