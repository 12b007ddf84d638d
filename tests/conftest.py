"""Shared pytest set-up. Fixture modules live beside the tests that use them; keep this file small."""

import os

# Tests never talk to real providers or a real LiveKit unless a test opts in explicitly.
os.environ.setdefault("VOICE_WORKER_MODE", "dev")
