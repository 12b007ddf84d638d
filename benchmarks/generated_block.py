"""A README block of generated figures: its opening marker, the figures as JSON in a comment, the table rendered
from them, its closing marker. A benchmark's `--readme` writes it from a run's JSON; the README tests read it back
and check the table is what the figures render to, so no figure in the README is edited by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def block(begin: str, end: str, figures: dict[str, Any], rendered: str) -> str:
    return "\n".join([begin, f"<!-- {json.dumps(figures, sort_keys=True)} -->", "", rendered, "", end])


def read(text: str, begin: str, end: str) -> tuple[dict[str, Any], str] | None:
    """(the figures embedded in the block, the table the block shows), or None without a block."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < 0:
        return None
    lines = text[start:stop].splitlines()
    if len(lines) < 3:  # the markers without figures between them
        return None
    figures = json.loads(lines[1].removeprefix("<!-- ").removesuffix(" -->"))
    return figures, "\n".join(lines[3:]).strip()


def replace(readme: Path, begin: str, end: str, new_block: str, *, what: str) -> None:
    """Put `new_block` where the README's block between `begin` and `end` is; exit naming `what` if it has none."""
    text = readme.read_text()
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < 0:
        raise SystemExit(f"README.md has no {what} block to replace")
    readme.write_text(text[:start] + new_block + text[stop + len(end) :])
