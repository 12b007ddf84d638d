"""`voice-worker start|dev|check`: the worker process (handed to livekit's `start` command), the whole local
stack, the catalog check."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cli.common import EXIT_OK, EXIT_PROBLEMS, json_logging, load_cli_settings, require_free_port
from contract.settings import SettingsError
from door.settings import DoorSettings

# The module that defines the worker's AgentServer (`server`), as livekit's `start` command loads it.
APP = Path(__file__).resolve().parent.parent / "worker" / "app.py"


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

    settings = load_cli_settings(args, dev=dev)
    settings.require_production_secrets(dev_hint="or run `voice-worker dev` against `livekit-server --dev`")
    require_free_port("HEALTH_PORT", settings.health_host, settings.health_port)
    if settings.metrics_port is not None:
        require_free_port("PROMETHEUS_PORT", settings.health_host, settings.metrics_port)
    if settings.metrics_port is not None:
        _use_multiprocess_metrics()
    from worker.check import check_catalog

    # Production lines are JSON from the first one (livekit's own set-up only comes later, in livekit_main).
    early = None if dev else json_logging(args.log_level)
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
    from worker import connectivity, event_loop

    connectivity.install(settings.livekit_url)
    # before livekit's command line creates its loops; job processes install it again in their setup
    event_loop.install(settings.event_loop)
    _early_line(dev, logging.INFO, f"voice-worker: calls run on the {event_loop.installed()} event loop")
    argv = ["start", str(app), "--log-level", args.log_level]
    if early is not None:
        logging.getLogger().removeHandler(early)  # livekit's start command installs its own JSON handler
    if not dev:
        # JSON lines; each record of a call carries session_id, agent_id and job_id (telemetry/logcontext.py)
        return livekit_start([*argv, "--log-format", "json"])
    from worker.devserver import ensure_dev_server

    # a laptop with livekit-server installed and nothing on the dev port gets one for the worker's lifetime
    with ensure_dev_server(settings.livekit_url):
        return livekit_start([*argv, "--dev"])


def livekit_start(argv: list[str]) -> int:
    """livekit's documented command line, `python -m livekit.agents <argv>`, run in this process (as `-m` runs it)
    so that what was set up here (the dev server, the log filters, the environment) lasts as long as the worker.
    The command line is the interface: its options are livekit's `start` options, its result the exit status."""
    import runpy

    saved = sys.argv
    sys.argv = ["python -m livekit.agents", *argv]
    try:
        runpy.run_module("livekit.agents", run_name="__main__", alter_sys=False)
    except SystemExit as done:
        return _exit_status(done.code)
    finally:
        sys.argv = saved
    return EXIT_OK


def _exit_status(code: object) -> int:
    """What `sys.exit(code)` makes the process's exit status."""
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else 1


def _early_line(dev: bool, level: int, message: str) -> None:
    if dev:
        print(message, file=sys.stderr)
    else:
        logging.getLogger("voice_worker.catalog").log(level, message)


def dev(args: argparse.Namespace) -> int:
    """`voice-worker dev`: LiveKit, the worker and the door with its call page (cli/devstack.py);
    `--worker-only`: the worker alone, as the stack runs it."""
    if args.worker_only:
        return run_worker(args, dev=True)
    from cli.devstack import StackOptions, run_dev_stack

    if args.livekit_url:
        # the flag wins over .env, in this process and in the worker and door it starts
        os.environ["LIVEKIT_URL"] = args.livekit_url
    settings = load_cli_settings(args, dev=True)
    options = StackOptions(
        livekit_url=args.livekit_url,
        door_port=args.door_port,
        node_ip=args.node_ip,
        catalog=args.catalog,
        log_level=args.log_level,
        verbose=args.verbose,
    )
    return run_dev_stack(settings, load_cli_settings(args, dev=True, of=DoorSettings), options)


def check(args: argparse.Namespace) -> int:
    settings = load_cli_settings(args)
    from worker.check import catalog_warnings, check_catalog

    catalog, problems = check_catalog(settings.catalog_path, settings)
    # settings that cannot apply here (noise cancellation, voicemail for web callers...): said, never failed
    for warning in catalog_warnings(catalog):
        print(f"warning: {warning}")
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {settings.catalog_path}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"catalog OK: {settings.catalog_path}: {catalog.summary()}")
    return EXIT_OK
