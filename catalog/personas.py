"""What a persona is: the character an agent speaks as, shared by any revision or team whose pipeline names it.

A persona file (`kind: persona`, conventionally under the catalog's `personas/` directory) carries the text that
joins the agent's instructions ahead of its system prompt: who the agent is, its tone, what it never does. A
pipeline's `persona_id` (the platform's name) refers to it. The text is a sandboxed Jinja2 template over the call's
context variables, like the system prompt.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID
    name: str = Field(min_length=1, max_length=120)
    instructions: str = Field(min_length=1, max_length=8000)
