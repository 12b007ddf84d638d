"""Turn 1 through an audio session (real Silero VAD, preemptive generation on): the reply livekit started at
the STT final is the one the caller hears, under the chosen procedure; no second generation after the router.
The latency figures themselves are the benchmark's business (benchmarks/turn1_penalty.py); nothing here is timed."""

from __future__ import annotations

import logging

import pytest

from benchmarks import turn1_penalty as bench
from catalog.loader import load_catalog
from contract.settings import EXAMPLE_CATALOG
from pipelines.vad import SharedVAD
from tests.doubles.wav_fixtures import require_espeak, synthesize_speech


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    require_espeak()
    return synthesize_speech(bench.TURN1, cache_dir=tmp_path_factory.mktemp("speech"))


async def test_turn_one_keeps_the_preemptive_reply(clip, caplog):
    # The VAD lets go after 0.2 s of silence and the turn ends 0.9 s after speech: the STT final (and with it
    # the preemptive reply and the router) comes well inside the endpointing window, and the router (250 ms)
    # answers before the turn is committed. Changing the agent's instructions at that point would make
    # livekit discard the preemptive reply; the supervisor must wait for the commit.
    config = bench.pipeline_config(
        endpointing_min_delay_ms=900, local_vad_params={"confidence": 0.7, "start_secs": 0.2, "stop_secs": 0.2}
    )
    revision = load_catalog(EXAMPLE_CATALOG).agents[bench.SUPPORT].active_revision
    with caplog.at_level(logging.DEBUG, logger="livekit.agents"):
        result = await bench.run_call("speculative", revision, SharedVAD.load(), (clip, clip), config)
    assert result.turn1_reply == bench.REFUND_REPLY
    assert result.router_requests == 1
    # one stream per candidate (refund_request, general_help), both started at the STT final, one kept
    assert result.reply_requests_turn1 == 2
    messages = [r.getMessage() for r in caplog.records]
    assert not any("preemptive generation invalidated" in m for m in messages)
    assert messages.count("using preemptive generation") == 2  # turn 1 and turn 2
