"""`voice-worker door`: serve the web-call door with the door's own settings."""

from __future__ import annotations

import argparse

from cli.common import EXIT_OK, json_logging, load_cli_settings, require_free_port
from door.settings import DoorSettings


def door(args: argparse.Namespace) -> int:
    from door.server import serve

    settings = load_cli_settings(args, of=DoorSettings)
    require_free_port("DOOR_PORT", settings.door_host, settings.door_port)
    if not settings.is_dev:
        # Every line JSON, uvicorn's access and error lines included (door.server keeps this set-up).
        json_logging("INFO")
    serve(settings)
    return EXIT_OK
