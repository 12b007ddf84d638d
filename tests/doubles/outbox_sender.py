"""A worker's post-call delivery loop on its own, as a process a test can kill -9 (tests/test_postcall_delivery.py).

`python -m tests.doubles.outbox_sender` runs the production `OutboxLoop` (worker/outbox_loop.py) with the settings
read from the environment, exactly as the worker's main process starts it, and prints "running" once it has. It
runs until killed; nothing else of the worker (LiveKit, job processes) is needed to deliver webhooks.
"""

from __future__ import annotations

import asyncio
import sys


async def _run() -> None:
    from worker.outbox_loop import OutboxLoop
    from worker.settings import Settings

    loop = OutboxLoop(Settings())
    loop.start()
    print("running", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_run())
    sys.exit(0)
