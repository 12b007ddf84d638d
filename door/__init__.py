"""The web-call door: the HTTP API that mints browser call tokens (Feather and RevDesk contracts)."""

from door.app import create_app
from door.server import serve

__all__ = ["create_app", "serve"]
