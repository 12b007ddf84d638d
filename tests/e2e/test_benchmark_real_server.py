"""`python -m benchmarks.run --short --only real_server` runs the real-server benchmark end to end on CI, so it
cannot rot: real livekit-server, the real worker and the stock agent, real WebRTC callers.

Short mode's figures mean little (two turns, two concurrent calls, a shared machine); this checks that every
figure was produced from calls that were answered, and that the figures are physically possible: no answer
before the configured endpointing has passed, none slower than a few seconds, CPU and memory measured on the
agents' own process trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import real_server
from tests.doubles.wav_fixtures import espeak_available
from tests.e2e.conftest import unavailable
from tests.e2e.livekit_server import pinned_version

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 600


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_short_real_server_run(test_network: None, livekit_binary: None, tmp_path: Path) -> None:
    if not espeak_available():
        unavailable("espeak-ng is not installed; run scripts/setup --dev")
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--short", "--only", "real_server", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(out.read_text())
    report = json.loads((tmp_path / "real_server-short.json").read_text())
    assert run["real_server"]["summary"] == report["summary"]
    assert "| this worker |" in proc.stdout and "| stock livekit-agents 1.8.9 |" in proc.stdout

    assert report["short"] and report["machine"]["logical_cores"] >= 1
    assert report["machine"]["load_average_at_start"] is not None
    assert report["machine"]["livekit_server"] == pinned_version()
    pinning = report["pinning"]
    assert pinning["enabled"] == (len(pinning["worker_cpus"] + pinning["other_cpus"]) >= 2)
    assert report["livekit_server_alive"]
    endpointing = report["endpointing_ms"]
    assert endpointing == 500 and report["deduct_ms"] == endpointing + report["critical_providers_ms"]

    v2v = report["voice_to_voice"]
    for impl in real_server.IMPLS:
        stats = v2v["stats"][impl]
        assert stats["turns"] == v2v["rounds"] * v2v["turns_per_call"] and stats["unanswered"] == 0, stats
        assert stats["failed_calls"] == 0, stats["errors"]
        # nobody answers before the endpointing delay has passed, and a turn on an idle machine takes seconds
        assert endpointing <= stats["v2v_p50_ms"] <= stats["v2v_p95_ms"] < 5000, stats
        assert stats["overhead_p50_ms"] == pytest.approx(stats["v2v_p50_ms"] - report["deduct_ms"])
    for call in v2v["calls"]:
        assert call["joined_s"] is not None and call["joined_s"] < 20
        assert call["greeting_at"] is not None and call["greeting_at"] > call["connected_at"]
    assert v2v["ratio_stock_over_worker"]["v2v_p50"] > 0

    density = report["density"]
    for impl in real_server.IMPLS:
        [level] = density["sweeps"][impl]["levels"]
        assert level["calls"] == 2 and level["unanswered"] == 0 and level["failed_calls"] == 0, level["errors"]
        assert level["caller_processes"] == 1
        # the agent's process tree can use no more than the cores it is pinned to (sampling jitter aside)
        assert 0 < level["agent_cpu_percent"] <= 100 * len(pinning["worker_cpus"]) + 10
        assert level["callers_cpu_percent"] is not None and level["callers_cpu_percent"] > 0
        assert level["server_cpu_percent"] is not None and level["server_cpu_percent"] > 0
        assert 0 < level["agent_pss_idle_mb"] <= level["agent_pss_peak_mb"]
        assert level["agent_rss_idle_mb"] >= level["agent_pss_idle_mb"] * 0.5

    # the cold start's floor: a fresh interpreter importing livekit-agents and the plugins on the workers' core
    floor = report["import_floor_s"]
    assert floor["runs"] == 2 and 0 < floor["p50"] <= floor["max"] < 30, floor

    table = real_server.render_markdown(report["summary"])
    assert table in proc.stdout
