"""The LLMs a simulation uses beside the agent's own: the persona caller's and the rubric judge's.

Built from the provider registry (pipelines/providers.py) with the process's keys, like the agent's chain; a
scenario names its own or takes the target pipeline's primary model. Tests hand in a factory of doubles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livekit.agents import llm

from catalog.pipeline_config import ModelChainEntry, VoicePipelineConfig
from pipelines.providers import PROVIDERS, SettingsWithKeys

ModelFactory = Callable[[ModelChainEntry], llm.LLM[Any]]


class ModelUnavailable(RuntimeError):
    pass


def provider_models(settings: SettingsWithKeys) -> ModelFactory:
    def build(entry: ModelChainEntry) -> llm.LLM[Any]:
        provider = PROVIDERS.get(entry.provider)
        if provider is None or provider.build_llm is None:
            raise ModelUnavailable(f"provider {entry.provider!r} has no LLM here")
        key = provider.api_key(settings)
        if key is None:
            raise ModelUnavailable(f"{provider.key_env} is not set (needed for {entry.provider} {entry.model})")
        return provider.build_llm(entry, api_key=key)

    return build


def model_entry(explicit: ModelChainEntry | None, pipeline: VoicePipelineConfig) -> ModelChainEntry:
    """The scenario's own model, else the target pipeline's primary one."""
    return explicit if explicit is not None else pipeline.model_chain[0]
