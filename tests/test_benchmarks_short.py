"""`python -m benchmarks.run --short` runs every benchmark end to end, so none of them can rot unnoticed.

Short mode's figures mean little (a few calls, run side by side); this checks that each benchmark produced
its figures from calls that completed, not what the figures are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.doubles.wav_fixtures import require_espeak

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 100
SIMULATED = ("call_start", "turns", "turn1", "density")


def test_short_run_produces_every_figure(tmp_path: Path):
    require_espeak()
    out = tmp_path / "run.json"
    proc = subprocess.run(
        # the real-server benchmark has its own e2e test (tests/e2e/test_benchmark_real_server.py)
        [sys.executable, "-m", "benchmarks.run", "--short", "--json", str(out), "--only", *SIMULATED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["command"].startswith("python -m benchmarks.run --short")
    assert report["machine"]["logical_cores"] >= 1
    assert f"Machine: {report['machine']['logical_cores']} cores" in proc.stdout
    assert report["command"] in proc.stdout

    turns = report["turn_overhead"]
    assert {s["tuning"] for s in turns["summaries"]} == {"worker", "stock"}
    for summary in turns["summaries"]:
        assert summary["unanswered"] == 0 and summary["turns"] >= 1
        assert summary["overhead_p50_ms"] is not None and summary["nominal_p50_ms"] is not None
    assert turns["calls"] and all(call["error"] is None for call in turns["calls"])

    starts = report["call_start"]
    assert {s["mode"] for s in starts} == {"warm", "cold"}
    assert all(s["errors"] == 0 and s["p50_ms"] is not None for s in starts)

    penalty = report["turn1_penalty"]
    assert penalty is None or "speculative" in penalty["designs"]

    [sweep] = report["density"]
    [level] = sweep["levels"]
    assert sweep["executor"] == "process"
    assert level["calls"] == level["completed"] == 2 and level["failed"] == 0
    assert level["unanswered"] == 0 and len(level["overhead_ms"]) == level["turns"]
    assert level["cpu_percent"] is not None and level["cpu_percent"] > 0
    # two job processes and the forkserver came and went on top of the launching process
    assert level["processes_at_peak"] >= 3 and level["pss_peak_mb"] > level["pss_before_mb"]
    assert "| executor | variant | calls |" in proc.stdout
