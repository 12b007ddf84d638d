"""Serving the door with uvicorn: `serve(settings)` blocks until SIGINT/SIGTERM."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from worker.settings import Settings


def build_server(settings: Settings, app: FastAPI | None = None) -> uvicorn.Server:
    """A uvicorn server for the door on `DOOR_HOST:DOOR_PORT`, not yet started."""
    if app is None:
        # Imported here so that door.app can re-export `serve` (the CLI imports it from there).
        from door.app import create_app

        app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.door_host,
        port=settings.door_port,
        # One process: rate limits and idempotency keys live in it.
        workers=1,
        server_header=False,
        # Keep the process's logging set-up when the CLI made one; otherwise uvicorn's default.
        log_config=None if logging.getLogger().handlers else uvicorn.config.LOGGING_CONFIG,
    )
    return uvicorn.Server(config)


def serve(settings: Settings) -> None:
    """Serve the door until SIGINT/SIGTERM. Raises `SettingsError` before binding when misconfigured."""
    build_server(settings).run()
