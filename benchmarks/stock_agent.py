"""A minimal stock livekit-agents agent: the comparison point of the real-server benchmark (benchmarks/real_server.py).

What the livekit-agents quick start writes, and nothing of this project: one `AgentSession` per job with the
Deepgram STT, an OpenAI-compatible LLM and the Deepgram TTS (the plugins the example sales agent's pipeline
uses, pointed at the same provider doubles by `base_url`), one Silero VAD loaded per process in the setup
function, `TurnHandlingOptions(turn_detection="vad", endpointing={"min_delay": ...})` with the sales agent's
endpointing, the sales agent's greeting said first. Registered under its own agent name for explicit dispatch;
callers reach it with a token whose room configuration dispatches that name.

Two settings differ from a bare quick start, both so that the comparison measures the agent and not the
harness: the load it reports is its job count over a capacity it never reaches, with no threshold (livekit's
default load is the whole machine's CPU, which here includes livekit-server, the callers and other people's
work: the worker is marked full at 70 %, and livekit-server stops dispatching to a worker whose reported load
nears 1 even when its status says available; the worker under test runs with its CPU guard off for the same
reason), and the health port is a free one (two workers share the test host).

Configuration is by environment (set by benchmarks/real_server.py): LIVEKIT_URL / LIVEKIT_API_KEY /
LIVEKIT_API_SECRET, STOCK_AGENT_NAME, STOCK_HEALTH_PORT, STOCK_OPENAI_BASE_URL, STOCK_LLM_MODEL,
STOCK_DEEPGRAM_LISTEN_URL, STOCK_DEEPGRAM_SPEAK_URL, STOCK_STT_MODEL, STOCK_TTS_MODEL, STOCK_ENDPOINTING_S,
STOCK_INSTRUCTIONS, STOCK_GREETING, OPENAI_API_KEY, DEEPGRAM_API_KEY.

Usage: `python -m benchmarks.stock_agent start`.
"""

from __future__ import annotations

import math
import os

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, JobProcess, cli
from livekit.agents.voice.turn import TurnHandlingOptions
from livekit.plugins import deepgram, openai, silero


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"benchmarks.stock_agent: {name} is not set")
    return value


def prewarm(proc: JobProcess) -> None:
    # the quick start's prewarm: one Silero model per job process, shared by that process's sessions
    proc.userdata["vad"] = silero.VAD.load()


# far above any level the benchmark reaches: the load only says how busy the worker is, never full
_CAPACITY = 1000


def jobs_load(server: AgentServer) -> float:
    return len(server.active_jobs) / _CAPACITY


server = AgentServer(
    setup_fnc=prewarm,
    load_fnc=jobs_load,
    load_threshold=math.inf,
    port=int(os.environ.get("STOCK_HEALTH_PORT", "0")),
)


@server.rtc_session(agent_name=os.environ.get("STOCK_AGENT_NAME", "stock-agent"))
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession[None] = AgentSession(
        stt=deepgram.STT(model=_env("STOCK_STT_MODEL"), base_url=_env("STOCK_DEEPGRAM_LISTEN_URL")),
        llm=openai.LLM(model=_env("STOCK_LLM_MODEL"), base_url=_env("STOCK_OPENAI_BASE_URL")),
        tts=deepgram.TTS(model=_env("STOCK_TTS_MODEL"), base_url=_env("STOCK_DEEPGRAM_SPEAK_URL")),
        vad=ctx.proc.userdata["vad"],
        turn_handling=TurnHandlingOptions(
            turn_detection="vad", endpointing={"min_delay": float(_env("STOCK_ENDPOINTING_S"))}
        ),
    )
    await session.start(agent=Agent(instructions=_env("STOCK_INSTRUCTIONS")), room=ctx.room)
    session.say(_env("STOCK_GREETING"))


if __name__ == "__main__":
    cli.run_app(server)
