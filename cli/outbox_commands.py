"""`voice-worker outbox list|show|resend`: the post-call webhooks in the store, as an operator sees them."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from cli.common import EXIT_OK, EXIT_PROBLEMS, fail, load_cli_settings, uuid_arg
from worker.settings import Settings


def outbox(args: argparse.Namespace) -> int:
    """`voice-worker outbox list|show|resend`: the post-call webhooks in the store, as an operator sees them."""
    from records.migrate import upgrade
    from records.store import SessionStore

    settings = load_cli_settings(args)
    try:
        # the worker and the door migrate at start; an operator may come first (e.g. after an upgrade)
        upgrade(settings.database_url)
    except Exception as exc:  # the URL can hold a password: name the setting and the error type only
        return fail(f"DATABASE_URL: cannot open the session store ({type(exc).__name__})", EXIT_PROBLEMS)
    store = SessionStore.from_settings(settings)

    async def run() -> int:
        try:
            if args.outbox_command == "list":
                return await _outbox_list(store, args.state, args.limit)
            entry = await _outbox_find(store, args.id)
            if entry is None:
                return fail(f"outbox: no entry {args.id}", EXIT_PROBLEMS)
            if args.outbox_command == "show":
                print(json.dumps(_outbox_view(entry, payload=True), indent=2))
                return EXIT_OK
            return await _outbox_resend(store, settings, entry.id)
        finally:
            await store.aclose()

    return asyncio.run(run())


async def _outbox_find(store: Any, ident: str) -> Any:
    """An entry by its number (as `list` shows it) or by its session id (the webhook's Idempotency-Key)."""
    if ident.isdigit():
        return await store.outbox_entry_by_id(int(ident))
    return await store.outbox_entry(uuid_arg(ident, "ID"))


def _outbox_view(entry: Any, *, payload: bool) -> dict[str, Any]:
    view = entry.model_dump(mode="json", exclude={"payload"} if not payload else set())
    return {"id": view.pop("id"), "state": entry.state, **view}


async def _outbox_list(store: Any, state: str, limit: int) -> int:
    entries = await store.list_outbox(state, limit=limit)
    print(f"{'ID':>6}  {'SESSION':36}  {'STATE':9}  {'ATTEMPTS':>8}  {'CREATED':25}  LAST ERROR")
    for e in entries:
        error = (e.last_error or "").splitlines()[0][:80] if e.last_error else ""
        created = e.created_at.isoformat(timespec="seconds")
        print(f"{e.id:>6}  {e.session_id!s:36}  {e.state:9}  {e.attempts:>8}  {created:25}  {error}")
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({state})")
    return EXIT_OK


async def _outbox_resend(store: Any, settings: Settings, entry_id: int) -> int:
    """Queued again with a fresh attempt budget, then one attempt from here when the webhook is configured."""
    from postcall.outbox import OutboxDelivery

    entry = await store.requeue_outbox(entry_id, now=store.now())
    if entry is None:
        return fail(f"outbox: entry {entry_id} is already delivered", EXIT_PROBLEMS)
    delivery = OutboxDelivery.from_settings(store, settings)
    if delivery is None:
        print(f"entry {entry_id} queued again; the worker delivers it (POSTCALL_WEBHOOK_URL is not set here)")
        return EXIT_OK
    try:
        outcome = await delivery.deliver_entry(entry_id)
    finally:
        await delivery.aclose()
    after = await store.outbox_entry_by_id(entry_id)
    if outcome == "delivered":
        print(f"entry {entry_id} delivered (session {entry.session_id})")
        return EXIT_OK
    if outcome is None:
        print(f"entry {entry_id} queued again; a worker is sending it now")
        return EXIT_OK
    error = after.last_error if after is not None else "unknown"
    then = "parked again" if outcome == "parked" else "queued: the worker retries it on the backoff schedule"
    print(f"entry {entry_id}: attempt failed ({error}); {then}")
    return EXIT_PROBLEMS
