"""A worker whose calls need no SFU, for drain and load tests against the LiveKit protocol double.

Everything is production code except the session entrypoint: `voice-worker start`'s own `run_worker` (settings,
multiprocess metrics, JSON logs, livekit's CLI with its signal handling and drain), `create_server` with the real
`DispatchGate`, setup function, load function and outbox loop. Only `held_entrypoint` differs from
`worker.server.entrypoint`: the job's room cannot be joined without an SFU, so the call runs in text mode (no
room) with a scripted LLM, and instead of waiting for the session to close the entrypoint returns at once and
leaves the job running until LiveKit (or the drain) ends it. The end of the job then goes through the production
`after_call`: the call is finished, the post-call processor records it and queues its webhook, one delivery
attempt is made.

`python -m tests.doubles.held_call start` runs it like `voice-worker start` (held_call_app.py defines `server`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Nothing that imports livekit (and with it prometheus_client) at module level: run as a script, this module
# must let `run_worker` choose the metrics mode first, as `voice-worker start` does.
if TYPE_CHECKING:
    from livekit.agents import JobContext

APP = Path(__file__).with_name("held_call_app.py")
GREETING = "Hello, this call is held for the test."


async def held_entrypoint(ctx: JobContext) -> None:
    from calls.bootstrap import start_call
    from tests.doubles.fake_llm import FakeLLM
    from worker.server import after_call

    services = ctx.proc.userdata["services"]
    text_services = dataclasses.replace(
        services, session_kwargs=lambda _config: {"llm": FakeLLM([GREETING])}, text_only=True
    )
    call = await start_call(ctx, text_services, room=None)

    async def on_shutdown() -> None:
        await after_call(call, services)

    ctx.add_shutdown_callback(on_shutdown)


async def idle_entrypoint(ctx: JobContext) -> None:
    """A job that only occupies its slot until LiveKit ends it (load tests: no call, no records)."""


def main(argv: list[str]) -> int:
    from cli import main as cli

    args = cli.build_parser().parse_args(argv)
    return cli.run_worker(args, dev=args.command == "dev", app=APP)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
