"""What every `voice-worker` command shares: exit codes, settings, argument parsing helpers, failing in one line."""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from typing import Any, TypeVar, overload

from contract.settings import DEV_LIVEKIT_API_SECRET, SettingsError, SharedSettings, load
from worker.settings import Settings

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141


S = TypeVar("S", bound=SharedSettings)


@overload
def load_cli_settings(args: argparse.Namespace, *, dev: bool | None = None) -> Settings: ...


@overload
def load_cli_settings(args: argparse.Namespace, *, dev: bool | None = None, of: type[S]) -> S: ...


def load_cli_settings(
    args: argparse.Namespace, *, dev: bool | None = None, of: type[SharedSettings] = Settings
) -> SharedSettings:
    """The settings `of` a process (the worker's unless a command says otherwise), with the command's flags."""
    overrides: dict[str, Any] = {}
    if dev is not None:
        overrides["VOICE_WORKER_MODE"] = "dev" if dev else "production"
    if getattr(args, "catalog", None):
        overrides["CATALOG_PATH"] = args.catalog
    settings = load(of, **overrides)
    quiet_dev_key_warning(settings)
    return settings


def quiet_dev_key_warning(settings: SharedSettings) -> None:
    """livekit-server --dev's API secret is the 6-byte "secret", so PyJWT warns (InsecureKeyLengthWarning) on every
    LiveKit token signed with it: the worker's registration, every web-call. That pair is public by design and
    refused outside dev mode, so the warning says nothing there; with any other secret it stays on."""
    secret = settings.livekit_api_secret
    if settings.is_dev and secret is not None and secret.get_secret_value() == DEV_LIVEKIT_API_SECRET:
        import warnings

        from jwt.warnings import InsecureKeyLengthWarning

        warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


def uuid_arg(value: str | None, flag: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not a UUID") from None


class UsageError(ValueError):
    pass


class RefusedInput(ValueError):
    """inspect-dispatch was given a token it cannot open: exit 3 like a refused dispatch, without a report."""


def fail(message: str, code: int) -> int:
    print(f"voice-worker: {message}", file=sys.stderr)
    return code


def parse_vars(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--var {pair!r}: expected NAME=VALUE")
        values[name] = value
    return values


def target_and_seeds(args: argparse.Namespace) -> tuple[uuid.UUID | None, uuid.UUID | None, dict[str, str]]:
    """--agent-id/--team-id and --var NAME=VALUE, or UsageError naming what is wrong."""
    try:
        seeds = parse_vars(args.var)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return uuid_arg(args.agent_id, "--agent-id"), uuid_arg(args.team_id, "--team-id"), seeds


def database_error(exc: Exception) -> SettingsError:
    """The session row could not be written. The URL can hold a password: name the setting, never its value."""
    from sqlalchemy.exc import DBAPIError

    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return SettingsError(
        f"DATABASE_URL: the session store cannot be used ({type(cause).__name__}: {reason}); start the database "
        "or point DATABASE_URL at one (unset: a SQLite file under var/)"
    )


def require_free_port(variable: str, host: str, port: int) -> None:
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


def json_logging(level: str) -> logging.Handler:
    from telemetry import logcontext

    return logcontext.install_json_logging(level)
