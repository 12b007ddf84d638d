"""`voice-worker web-call|inspect-dispatch|console`: mint a call as the door would, show what the worker will do
with a dispatch, talk to an agent in the terminal."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    RefusedInput,
    database_error,
    fail,
    load_cli_settings,
    target_and_seeds,
)
from contract.settings import SharedSettings
from door.settings import DoorSettings


def web_call(args: argparse.Namespace) -> int:
    """The door's own minting core (scope: everything), so the CLI and the HTTP door cannot drift apart."""
    from sqlalchemy.exc import SQLAlchemyError

    from catalog.context_vars import ContextVarErrors
    from catalog.loader import CatalogStore
    from door.core import CallTarget, WebCallService
    from door.errors import DoorError, TargetNotFound
    from door.keys import ApiKey, KeyScopes
    from door.sessions import default_session_creator

    settings = load_cli_settings(args, of=DoorSettings)
    settings.require_production_secrets()
    agent_id, team_id, seeds = target_and_seeds(args)
    target = CallTarget(kind="agent", id=agent_id) if agent_id else CallTarget(kind="team", id=team_id)  # type: ignore[arg-type]  # argparse requires one of the two
    if team_id and seeds:
        print("voice-worker: team calls ignore context variables (platform contract)", file=sys.stderr)
    operator = ApiKey(name="voice-worker-cli", sha256="0" * 64, scopes=KeyScopes(agents=("*",), teams=("*",)))
    try:
        service = WebCallService(settings, CatalogStore(settings.catalog_path), default_session_creator(settings))
        minted = asyncio.run(service.start_call(operator, target, seeds or None, session_type=args.session_type))
    except ContextVarErrors as exc:
        return fail(f"context variables: {exc}", EXIT_USAGE)
    except TargetNotFound as exc:
        return fail(f"{exc} in the catalog (CATALOG_PATH); {_catalog_listing(settings)}", EXIT_USAGE)
    except DoorError as exc:
        return fail(str(exc), EXIT_USAGE)
    except SQLAlchemyError as exc:
        raise database_error(exc) from None
    print(json.dumps(minted.as_web_call_response(), indent=2))
    return EXIT_OK


def _catalog_listing(settings: SharedSettings) -> str:
    """The ids a mistyped one was meant to be, with their names: what a newcomer needs next to "not found"."""
    from catalog.loader import load_catalog

    catalog = load_catalog(settings.catalog_path)
    agents = ", ".join(f"{a.id} ({a.name})" for a in sorted(catalog.agents.values(), key=lambda a: a.name))
    teams = ", ".join(f"{t.id} ({t.name})" for t in sorted(catalog.teams.values(), key=lambda t: t.name))
    return f"its agents: {agents or 'none'}; its teams: {teams or 'none'}"


def inspect_dispatch(args: argparse.Namespace) -> int:
    from calls.admission import admit
    from catalog.loader import load_catalog
    from contract.dispatch import DispatchRejected, verify_dispatch_metadata

    settings = load_cli_settings(args)
    metadata = _dispatch_metadata(sys.stdin.read().strip(), settings)
    try:
        claims = verify_dispatch_metadata(metadata, secret=settings.signing_secret(), issuer=settings.dispatch_issuer)
        admission = admit(claims, load_catalog(settings.catalog_path), settings)
    except DispatchRejected as exc:
        print(json.dumps({"accepted": False, "reason": exc.reason, "detail": exc.detail}, indent=2))
        return EXIT_REFUSED
    report = {
        "accepted": True,
        "claims": claims.model_dump(mode="json", exclude_none=True),
        "agent": {
            "id": str(admission.agent.id),
            "name": admission.agent.name,
            "revision_id": str(admission.revision.id),
        },
        "team": {"id": str(admission.team.id), "name": admission.team.name} if admission.team else None,
        "seeds": admission.seeds,
    }
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _dispatch_metadata(text: str, settings: SharedSettings) -> str:
    """The job metadata to inspect, from what a newcomer has at hand: the metadata itself (`{"grant": ...}`), the
    JSON `web-call` printed, or the bare `access_token` a browser received. A token is checked against the LiveKit
    key pair, as livekit-server would; its own 5-minute expiry is ignored (the grant inside is checked anyway)."""
    token: str | None = None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
        if text.count(".") == 2 and " " not in text:
            token = text
    if isinstance(document, dict) and isinstance(document.get("access_token"), str):
        token = document["access_token"]
    if token is None:
        return text
    import jwt

    key, secret = settings.livekit_credentials()
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], issuer=key, options={"verify_exp": False, "verify_nbf": False}
        )
    except jwt.PyJWTError as exc:
        raise RefusedInput(
            f"access_token: not a LiveKit token of LIVEKIT_API_KEY / LIVEKIT_API_SECRET ({type(exc).__name__}); "
            "inspect it with the settings that minted it"
        ) from None
    agents = (claims.get("roomConfig") or {}).get("agents") or []
    if not agents or not isinstance(agents[0].get("metadata"), str):
        raise RefusedInput("access_token: its room configuration dispatches no agent (no job metadata to inspect)")
    metadata: str = agents[0]["metadata"]
    return metadata


def console(args: argparse.Namespace) -> int:
    from cli.console import run_console

    settings = load_cli_settings(args)
    settings.require_production_secrets()
    agent_id, team_id, seeds = target_and_seeds(args)
    _console_logging(verbose=args.verbose)
    return asyncio.run(run_console(settings, agent_id=agent_id, team_id=team_id, seeds=seeds))


def _console_logging(*, verbose: bool) -> None:
    """The console reports a failed turn itself, in one line naming the provider (cli/console.py); livekit's
    own records of it (a warning per fallback step, an error with a traceback per stream) would bury the
    conversation. `--verbose` shows them."""
    import logging

    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    else:
        # a handler on the root logger keeps logging's last-resort stderr handler from printing them
        logging.getLogger().addHandler(logging.NullHandler())
