"""`voice-worker`: the one console script (run the worker, check the catalog, mint and inspect dispatches)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from worker.settings import Settings, SettingsError, load_settings

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141


def _settings(args: argparse.Namespace, *, dev: bool | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if dev is not None:
        overrides["VOICE_WORKER_MODE"] = "dev" if dev else "production"
    if getattr(args, "catalog", None):
        overrides["CATALOG_PATH"] = args.catalog
    settings = load_settings(**overrides)
    _quiet_dev_key_warning(settings)
    return settings


def _quiet_dev_key_warning(settings: Settings) -> None:
    """livekit-server --dev's API secret is the 6-byte "secret", so PyJWT warns (InsecureKeyLengthWarning) on every
    LiveKit token signed with it: the worker's registration, every web-call. That pair is public by design and
    refused outside dev mode, so the warning says nothing there; with any other secret it stays on."""
    from worker.settings import DEV_LIVEKIT_API_SECRET

    secret = settings.livekit_api_secret
    if settings.is_dev and secret is not None and secret.get_secret_value() == DEV_LIVEKIT_API_SECRET:
        import warnings

        from jwt.warnings import InsecureKeyLengthWarning

        warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


def _uuid(value: str | None, flag: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _UsageError(f"{flag} {value!r} is not a UUID") from None


class _UsageError(ValueError):
    pass


def _fail(message: str, code: int) -> int:
    print(f"voice-worker: {message}", file=sys.stderr)
    return code


# --- start / dev ------------------------------------------------------------------------------------------


# The module that defines the worker's AgentServer (`server`), as livekit's `start` command loads it.
APP = Path(__file__).with_name("app.py")


def _use_multiprocess_metrics() -> None:
    """Job processes record metrics too: prometheus_client's multiprocess mode, chosen by an environment variable
    that must be set before prometheus_client is first imported (livekit-agents imports it), in this process and
    in every process started from it. An operator's own PROMETHEUS_MULTIPROC_DIR is kept."""
    import atexit
    import os
    import shutil
    import tempfile

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    if "prometheus_client" in sys.modules:
        # too late for this process: stay single-process everywhere rather than serve half the picture
        print("voice-worker: metrics cover the main process only (prometheus_client imported early)", file=sys.stderr)
        return
    path = tempfile.mkdtemp(prefix="voice-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


def run_worker(args: argparse.Namespace, *, dev: bool, app: Path = APP) -> int:
    """`voice-worker start|dev`: check settings and catalog, then hand over to livekit's `start` command.

    `app` is the module defining `server`; only tests pass another (one whose calls need no SFU)."""
    import os

    settings = _settings(args, dev=dev)
    settings.require_production_secrets(dev_hint="or run `voice-worker dev` against `livekit-server --dev`")
    _require_free_port("HEALTH_PORT", settings.health_host, settings.health_port)
    if settings.metrics_port is not None:
        _require_free_port("PROMETHEUS_PORT", settings.health_host, settings.metrics_port)
    if settings.metrics_port is not None:
        _use_multiprocess_metrics()
    from worker.check import check_catalog

    # Production lines are JSON from the first one (livekit's own set-up only comes later, in livekit_main).
    early = None if dev else _json_logging(args.log_level)
    catalog, problems = check_catalog(settings.catalog_path, settings)
    for problem in problems:
        _early_line(dev, logging.WARNING, f"catalog problem (that agent or team will be refused): {problem}")
    _early_line(dev, logging.INFO, f"voice-worker: catalog {settings.catalog_path}: {catalog.summary()}")
    # Job processes and the outbox loop assume the schema is current; the door runs the same migration.
    from records.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:  # the URL can hold a password: name the setting and the error type only
        raise SettingsError(f"DATABASE_URL: cannot bring the schema up to date ({type(exc).__name__})") from None

    # The composition root (worker/app.py) reads settings from the environment in this and every job process.
    os.environ["VOICE_WORKER_MODE"] = settings.mode.value
    os.environ["CATALOG_PATH"] = str(settings.catalog_path)
    from livekit.agents.__main__ import main as livekit_main

    from worker import connectivity

    connectivity.install(settings.livekit_url)
    argv = ["start", str(app), "--log-level", args.log_level]
    if early is not None:
        logging.getLogger().removeHandler(early)  # livekit_main installs its own JSON handler
    if not dev:
        # JSON lines; each record of a call carries session_id, agent_id and job_id (worker/logcontext.py)
        return livekit_main([*argv, "--log-format", "json"])
    from worker.devserver import ensure_dev_server

    # a laptop with livekit-server installed and nothing on the dev port gets one for the worker's lifetime
    with ensure_dev_server(settings.livekit_url):
        return livekit_main([*argv, "--dev"])


def _require_free_port(variable: str, host: str, port: int) -> None:
    """A port someone else holds is a newcomer's classic (a second worker, a stale door): say which setting moves
    it, before livekit or uvicorn fail on it with a traceback or a line that names no setting. A check, not a
    reservation: whoever binds first afterwards still wins, and then their own error stands."""
    import errno
    import socket

    if port == 0:  # the system picks a free port
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # TIME_WAIT leftovers of a process that just stopped do not keep a server from binding; nor here
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SettingsError(
                    f"{variable}: port {port} on {host} is already in use; stop what listens there or set "
                    f"{variable} to a free port"
                ) from None
            raise SettingsError(
                f"{variable}: cannot listen on {host}:{port} ({exc.strerror}); set {variable} (and the host setting "
                "beside it) to an address of this machine"
            ) from None


def _json_logging(level: str) -> logging.Handler:
    from worker import logcontext

    return logcontext.install_json_logging(level)


def _early_line(dev: bool, level: int, message: str) -> None:
    if dev:
        print(message, file=sys.stderr)
    else:
        logging.getLogger("voice_worker.catalog").log(level, message)


def _dev(args: argparse.Namespace) -> int:
    """`voice-worker dev`: LiveKit, the worker and the door with its call page (worker/devstack.py);
    `--worker-only`: the worker alone, as the stack runs it."""
    if args.worker_only:
        return run_worker(args, dev=True)
    from worker.devstack import StackOptions, run_dev_stack

    if args.livekit_url:
        # the flag wins over .env, in this process and in the worker and door it starts
        os.environ["LIVEKIT_URL"] = args.livekit_url
    settings = _settings(args, dev=True)
    options = StackOptions(
        livekit_url=args.livekit_url,
        door_port=args.door_port,
        node_ip=args.node_ip,
        catalog=args.catalog,
        log_level=args.log_level,
        verbose=args.verbose,
    )
    return run_dev_stack(settings, options)


# --- check ------------------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from worker.check import check_catalog

    catalog, problems = check_catalog(settings.catalog_path, settings)
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {settings.catalog_path}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"catalog OK: {settings.catalog_path}: {catalog.summary()}")
    return EXIT_OK


# --- web-call ---------------------------------------------------------------------------------------------


def _parse_vars(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--var {pair!r}: expected NAME=VALUE")
        values[name] = value
    return values


def _target_and_seeds(args: argparse.Namespace) -> tuple[uuid.UUID | None, uuid.UUID | None, dict[str, str]]:
    """--agent-id/--team-id and --var NAME=VALUE, or _UsageError naming what is wrong."""
    try:
        seeds = _parse_vars(args.var)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    return _uuid(args.agent_id, "--agent-id"), _uuid(args.team_id, "--team-id"), seeds


def _web_call(args: argparse.Namespace) -> int:
    """The door's own minting core (scope: everything), so the CLI and the HTTP door cannot drift apart."""
    from sqlalchemy.exc import SQLAlchemyError

    from catalog.context_vars import ContextVarErrors
    from catalog.loader import CatalogStore
    from door.core import CallTarget, WebCallService
    from door.errors import DoorError, TargetNotFound
    from door.keys import ApiKey, KeyScopes
    from door.sessions import default_session_creator

    settings = _settings(args)
    settings.require_production_secrets()
    agent_id, team_id, seeds = _target_and_seeds(args)
    target = CallTarget(kind="agent", id=agent_id) if agent_id else CallTarget(kind="team", id=team_id)  # type: ignore[arg-type]  # argparse requires one of the two
    if team_id and seeds:
        print("voice-worker: team calls ignore context variables (platform contract)", file=sys.stderr)
    operator = ApiKey(name="voice-worker-cli", sha256="0" * 64, scopes=KeyScopes(agents=("*",), teams=("*",)))
    try:
        service = WebCallService(settings, CatalogStore(settings.catalog_path), default_session_creator(settings))
        minted = asyncio.run(service.start_call(operator, target, seeds or None, session_type=args.session_type))
    except ContextVarErrors as exc:
        return _fail(f"context variables: {exc}", EXIT_USAGE)
    except TargetNotFound as exc:
        return _fail(f"{exc} in the catalog (CATALOG_PATH); {_catalog_listing(settings)}", EXIT_USAGE)
    except DoorError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except SQLAlchemyError as exc:
        raise _database_error(exc) from None
    print(json.dumps(minted.as_web_call_response(), indent=2))
    return EXIT_OK


def _catalog_listing(settings: Settings) -> str:
    """The ids a mistyped one was meant to be, with their names: what a newcomer needs next to "not found"."""
    from catalog.loader import load_catalog

    catalog = load_catalog(settings.catalog_path)
    agents = ", ".join(f"{a.id} ({a.name})" for a in sorted(catalog.agents.values(), key=lambda a: a.name))
    teams = ", ".join(f"{t.id} ({t.name})" for t in sorted(catalog.teams.values(), key=lambda t: t.name))
    return f"its agents: {agents or 'none'}; its teams: {teams or 'none'}"


def _database_error(exc: Exception) -> SettingsError:
    """The session row could not be written. The URL can hold a password: name the setting, never its value."""
    from sqlalchemy.exc import DBAPIError

    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return SettingsError(
        f"DATABASE_URL: the session store cannot be used ({type(cause).__name__}: {reason}); start the database "
        "or point DATABASE_URL at one (unset: a SQLite file under var/)"
    )


# --- inspect-dispatch -------------------------------------------------------------------------------------


def _inspect_dispatch(args: argparse.Namespace) -> int:
    from catalog.loader import load_catalog
    from worker.admission import admit
    from worker.dispatch import DispatchRejected, verify_dispatch_metadata

    settings = _settings(args)
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


def _dispatch_metadata(text: str, settings: Settings) -> str:
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
        raise _RefusedInput(
            f"access_token: not a LiveKit token of LIVEKIT_API_KEY / LIVEKIT_API_SECRET ({type(exc).__name__}); "
            "inspect it with the settings that minted it"
        ) from None
    agents = (claims.get("roomConfig") or {}).get("agents") or []
    if not agents or not isinstance(agents[0].get("metadata"), str):
        raise _RefusedInput("access_token: its room configuration dispatches no agent (no job metadata to inspect)")
    metadata: str = agents[0]["metadata"]
    return metadata


class _RefusedInput(ValueError):
    """inspect-dispatch was given a token it cannot open: exit 3 like a refused dispatch, without a report."""


# --- console ----------------------------------------------------------------------------------------------


def _console(args: argparse.Namespace) -> int:
    from worker.console import run_console

    settings = _settings(args)
    settings.require_production_secrets()
    agent_id, team_id, seeds = _target_and_seeds(args)
    _console_logging(verbose=args.verbose)
    return asyncio.run(run_console(settings, agent_id=agent_id, team_id=team_id, seeds=seeds))


def _console_logging(*, verbose: bool) -> None:
    """The console reports a failed turn itself, in one line naming the provider (worker/console.py); livekit's
    own records of it (a warning per fallback step, an error with a traceback per stream) would bury the
    conversation. `--verbose` shows them."""
    import logging

    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    else:
        # a handler on the root logger keeps logging's last-resort stderr handler from printing them
        logging.getLogger().addHandler(logging.NullHandler())


# --- outbox -----------------------------------------------------------------------------------------------


def _outbox(args: argparse.Namespace) -> int:
    """`voice-worker outbox list|show|resend`: the post-call webhooks in the store, as an operator sees them."""
    from records.migrate import upgrade
    from records.store import SessionStore

    settings = _settings(args)
    try:
        # the worker and the door migrate at start; an operator may come first (e.g. after an upgrade)
        upgrade(settings.database_url)
    except Exception as exc:  # the URL can hold a password: name the setting and the error type only
        return _fail(f"DATABASE_URL: cannot open the session store ({type(exc).__name__})", EXIT_PROBLEMS)
    store = SessionStore.from_settings(settings)

    async def run() -> int:
        try:
            if args.outbox_command == "list":
                return await _outbox_list(store, args.state, args.limit)
            entry = await _outbox_find(store, args.id)
            if entry is None:
                return _fail(f"outbox: no entry {args.id}", EXIT_PROBLEMS)
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
    return await store.outbox_entry(_uuid(ident, "ID"))


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
        return _fail(f"outbox: entry {entry_id} is already delivered", EXIT_PROBLEMS)
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


# --- door -------------------------------------------------------------------------------------------------


def _door(args: argparse.Namespace) -> int:
    from door.app import serve

    settings = _settings(args)
    _require_free_port("DOOR_PORT", settings.door_host, settings.door_port)
    if not settings.is_dev:
        # Every line JSON, uvicorn's access and error lines included (door.server keeps this set-up).
        _json_logging("INFO")
    serve(settings)
    return EXIT_OK


def _target(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--agent-id", help="agent UUID from the catalog")
    group.add_argument("--team-id", help="team UUID from the catalog")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="seed a context variable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("start", "run the worker in production mode (JSON logs, strict secrets)"),
        ("dev", "the local stack: livekit-server --dev, the worker and the door with its call page (dev mode)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--catalog", help="catalog directory (default: CATALOG_PATH)")
        p.add_argument("--log-level", default="INFO")
        if name == "dev":
            p.add_argument("--worker-only", action="store_true", help="only the worker (no LiveKit, no door)")
            p.add_argument("--livekit-url", help="an existing LiveKit server (default: LIVEKIT_URL, else a dev one)")
            p.add_argument("--door-port", type=int, help="the door's and call page's port (default: DOOR_PORT, 8000)")
            p.add_argument("--node-ip", help="the address a started livekit-server --dev puts in its ICE candidates")
            p.add_argument("--verbose", action="store_true", help="echo every line of the worker and door logs")
    p = sub.add_parser("check", help="validate the catalog; one `file: field: reason` line per problem")
    p.add_argument("--catalog", help="catalog directory (default: CATALOG_PATH or the example catalog)")
    p = sub.add_parser("web-call", help="mint what the door would return, for local testing")
    _target(p)
    p.add_argument("--session-type", choices=["live", "test", "simulation"], default="test")
    p.add_argument("--catalog")
    p = sub.add_parser(
        "inspect-dispatch",
        help="verify a dispatch read on stdin (job metadata, web-call's output or its access_token); exit 3 with the "
        "reason if refused",
    )
    p.add_argument("--catalog")
    p = sub.add_parser("console", help="a text conversation with an agent in the terminal")
    _target(p)
    p.add_argument("--catalog")
    p.add_argument("--verbose", action="store_true", help="show livekit's and the providers' log records")
    p = sub.add_parser("door", help="serve the web-call door (HTTP API)")
    p = sub.add_parser("outbox", help="post-call webhooks: list, show and re-send parked (undeliverable) entries")
    outbox = p.add_subparsers(dest="outbox_command", required=True)
    q = outbox.add_parser("list", help="one line per entry, oldest first")
    q.add_argument("--state", choices=["parked", "queued", "delivered", "all"], default="parked")
    q.add_argument("--limit", type=int, default=100)
    q = outbox.add_parser("show", help="one entry with its payload, as JSON")
    q.add_argument("id", metavar="ID", help="entry number (from list) or session id")
    q = outbox.add_parser("resend", help="queue the entry again with fresh budgets and try it once now")
    q.add_argument("id", metavar="ID", help="entry number (from list) or session id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "start": lambda a: run_worker(a, dev=False),
        "dev": _dev,
        "check": _check,
        "web-call": _web_call,
        "inspect-dispatch": _inspect_dispatch,
        "console": _console,
        "door": _door,
        "outbox": _outbox,
    }
    try:
        code = handlers[args.command](args)
        if args.command in ("start", "dev") and code == EXIT_OK:
            from worker.connectivity import worker_failure

            if worker_failure() is not None:  # logged in one line by worker/connectivity.py
                code = EXIT_PROBLEMS
        # stdout to a pipe is block-buffered: flush here, so a reader that went away surfaces below and not as
        # an "Exception ignored" message at interpreter exit
        sys.stdout.flush()
        return code
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"voice-worker: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except _RefusedInput as exc:
        return _fail(str(exc), EXIT_REFUSED)
    except (KeyboardInterrupt, EOFError):
        # Ctrl-C / Ctrl-D: the operator ended it on purpose
        return EXIT_OK
    except BrokenPipeError:
        # `voice-worker web-call ... | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # exit-time flush cannot raise again, and exit as a tool killed by SIGPIPE would (128 + 13).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        # The last resort, so that no command ends in a traceback: the error's type and first line say what
        # failed; the rest of a traceback helps a developer (who has --verbose or a debugger), not a newcomer.
        first_line = next(iter(str(exc).strip().splitlines()), "")
        return _fail(f"{args.command} failed: {type(exc).__name__}{': ' + first_line if first_line else ''}", 1)


if __name__ == "__main__":
    sys.exit(main())
