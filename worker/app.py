"""Composition root for `python -m livekit.agents start`: the module-level `server` it discovers.

Imported only by the `voice-worker start|dev` commands after the settings were checked; job processes import
worker.server (for the entrypoint), never this module.
"""

from worker.server import create_server
from worker.settings import get_settings

server = create_server(get_settings())
