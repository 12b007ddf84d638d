"""The README's door figures are the benchmark's: the block `python -m benchmarks.door --readme` writes holds the
run's report (as JSON in a comment) and the table and goal verdict rendered from it, so no figure is edited by hand.
"""

from __future__ import annotations

from benchmarks import door


def test_readme_door_table_is_rendered_from_the_embedded_run() -> None:
    found = door.readme_figures(door.README.read_text())
    assert found is not None, "README.md has no door figures block; run python -m benchmarks.door --readme"
    figures, table = found
    assert table == door.render_markdown(figures)
    assert figures["command"].startswith("python -m benchmarks.door")
    targets = {result["target"] for result in figures["results"]}
    assert {"ceiling", "door-sqlite", "door-postgresql"} <= targets
