"""Which event loop the worker's asyncio loops run on: uvloop by default, asyncio's own when EVENT_LOOP says so.

livekit's FFI thread hands every audio frame and room event to a call's loop with `call_soon_threadsafe`. On
asyncio's own loop each of those is a byte written to the loop's self-pipe and read back
(`_write_to_self` 11.7 % and `_read_from_self` 8.6 % of a worker's busy samples at 5 calls, docs/performance.md);
uvloop wakes its loop through one eventfd write while a wake-up is pending, however many frames arrive.

livekit creates its loops with `asyncio.new_event_loop()`, which follows the policy: installed before livekit's
command line starts (the main process and, with the thread executor, every call's thread) and again in each job
process's setup, which runs before that process creates its loop.
"""

from __future__ import annotations

import asyncio
from typing import Literal

EventLoopKind = Literal["uvloop", "asyncio"]


def install(kind: EventLoopKind) -> None:
    if kind == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)  # asyncio's default policy


def installed() -> EventLoopKind:
    """What a loop created now would be, for the start-up log line."""
    policy = type(asyncio.get_event_loop_policy())
    return "uvloop" if policy.__module__.startswith("uvloop") else "asyncio"
