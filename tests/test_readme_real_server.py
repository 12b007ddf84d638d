"""The README's real-server figures are the benchmark's: the block `python -m benchmarks.real_server --readme`
writes holds the run's summary (as JSON in a comment) and the table rendered from it. The table must be what
that summary renders to (nobody edited a figure by hand), and where the last full run's JSON is on this machine
(benchmarks/results/ is not tracked), the README must show that run."""

from __future__ import annotations

import json

from benchmarks import real_server


def test_readme_table_is_rendered_from_the_embedded_figures() -> None:
    found = real_server.readme_figures(real_server.README.read_text())
    assert found is not None, "README.md has no real-server block; run python -m benchmarks.real_server --readme"
    figures, table = found
    assert table == real_server.render_markdown(figures)
    assert figures["command"].startswith("python -m benchmarks.real_server")
    assert figures["cores"] >= 1 and "load_average_at_start" in figures


def test_readme_shows_the_last_full_run_when_it_is_here() -> None:
    latest = real_server.default_json(short=False)
    found = real_server.readme_figures(real_server.README.read_text())
    assert found is not None
    if not latest.exists():
        return  # a fresh checkout or CI: the run's JSON is not tracked; the first test still holds
    summary = json.loads(latest.read_text())["summary"]
    # the JSON round trip the README block makes (sorted keys) must not change a figure
    assert found[0] == json.loads(json.dumps(summary, sort_keys=True)), (
        "README's real-server figures are not the last run's: python -m benchmarks.real_server --readme"
    )
