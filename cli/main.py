"""`voice-worker`: the one console script (run the worker, check the catalog, mint and inspect dispatches).

A thin composition root: each command lives in a module of this package; this one parses and reports."""

from __future__ import annotations

import argparse
import os
import sys

from cli.call_commands import console, inspect_dispatch, web_call
from cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_REFUSED,
    EXIT_USAGE,
    RefusedInput,
    UsageError,
    fail,
)
from cli.door_command import door
from cli.outbox_commands import outbox
from cli.simulate_command import add_parser as add_simulate_parser
from cli.simulate_command import check, simulate
from cli.tool_call_command import add_parser as add_tool_call_parser
from cli.tool_call_command import tool_call
from cli.worker_commands import dev, run_worker
from contract.session_type import SessionType
from contract.settings import SettingsError


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
    p.add_argument("--session-type", choices=[t.value for t in SessionType], default="test")
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
    add_tool_call_parser(sub)
    add_simulate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "start": lambda a: run_worker(a, dev=False),
        "dev": dev,
        "check": check,
        "web-call": web_call,
        "inspect-dispatch": inspect_dispatch,
        "console": console,
        "door": door,
        "outbox": outbox,
        "tool-call": tool_call,
        "simulate": simulate,
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
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except RefusedInput as exc:
        return fail(str(exc), EXIT_REFUSED)
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
        return fail(f"{args.command} failed: {type(exc).__name__}{': ' + first_line if first_line else ''}", 1)


if __name__ == "__main__":
    sys.exit(main())
