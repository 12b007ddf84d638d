"""What a call's pipeline config adds to every agent that speaks in the call (procedures/agent.py `CallAgent`):

- `persona_id`: the persona's text (catalog/personas.py) ahead of the system prompt;
- `multilingual_*` / `locale`: the rule for the reply's language after it (pipelines/language.py);
- `pronunciation_overrides`: applied to the TTS input (pipelines/pronunciation.py).

A team call takes them from the team's pipeline, so every member speaks as the same persona.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from catalog.personas import Persona
from catalog.pipeline_config import VoicePipelineConfig
from pipelines.language import reply_language_note
from pipelines.pronunciation import Pronunciation


@dataclass(frozen=True)
class AgentFraming:
    # a template over the call's variables, like the system prompt
    persona: str | None = None
    language_note: str | None = None
    pronunciation: Pronunciation | None = None

    @classmethod
    def for_pipeline(cls, config: VoicePipelineConfig, personas: Mapping[uuid.UUID, Persona]) -> AgentFraming:
        """A persona the catalog lacks is a `check` problem (catalog/loader.py); the call runs without it."""
        persona = personas.get(config.persona_id) if config.persona_id is not None else None
        return cls(
            persona=persona.instructions if persona is not None else None,
            language_note=reply_language_note(config),
            pronunciation=Pronunciation.from_overrides(config.pronunciation_overrides),
        )

    def frame(self, persona: str | None, body: str) -> str:
        """`body` (the rendered system prompt, with any procedure) between the rendered persona and the language
        rule."""
        return "\n\n".join(part for part in (persona, body, self.language_note) if part)
