"""The example catalog with every provider pointed at the local doubles (tests/e2e/providers.py).

Only `base_url` changes: agents, revisions, procedures, teams and every other pipeline field are the shipped
examples', so the real-server suite calls the agents a newcomer gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.e2e.providers import ProviderDoubles

EXAMPLES = Path(__file__).resolve().parents[2] / "catalog" / "examples"


def _point_at_doubles(node: Any, doubles: ProviderDoubles, kind: str = "llm") -> None:
    """Every provider entry below `node`: STT and TTS chains by their key, everything else is a model (the model
    chain, router models of revisions, procedures and teams)."""
    if isinstance(node, list):
        for item in node:
            _point_at_doubles(item, doubles, kind)
        return
    if not isinstance(node, dict):
        return
    if "provider" in node:
        deepgram = {"stt": doubles.deepgram.listen_url, "tts": doubles.deepgram.speak_url}
        node["base_url"] = deepgram[kind] if node["provider"] == "deepgram" else doubles.openai.base_url
        return
    for key, value in node.items():
        _point_at_doubles(value, doubles, {"stt_chain": "stt", "tts_chain": "tts"}.get(key, kind))


def write_catalog(target: Path, doubles: ProviderDoubles, examples: Path = EXAMPLES) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    # every file, subdirectories too (tools/, personas/): the catalog an example agent refers to is whole
    for source in sorted(examples.rglob("*.yaml")):
        doc = yaml.safe_load(source.read_text())
        _point_at_doubles(doc, doubles)
        written = target / source.relative_to(examples)
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target
