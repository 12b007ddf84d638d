"""What is wrong with a pipeline config before any call uses it: unknown providers, providers asked for
something they do not offer, missing API keys, missing or malformed endpoints, contradictory settings.

Ranges (negative delays, confidence above 1) are rejected by pydantic when the catalog loads; this
module checks what needs the provider registry or the process settings. `voice-worker check` and the
dispatch request handler report these problems; `pipelines.builder.build_pipeline` refuses to build
while there are any, so a bad config never fails in the middle of a call.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from catalog.pipeline_config import ModelChainEntry, STTEntry, TTSEntry, VoicePipelineConfig
from pipelines.provider_data import PluginSignature, option_problems
from pipelines.providers import PROVIDERS, Kind, SettingsWithKeys, deepgram_tts_model, provider_names
from pipelines.turn_handling import turn_detector_supports
from pipelines.vad import VAD_SIGNATURE

_CHAINS: tuple[tuple[str, Kind], ...] = (("stt_chain", "stt"), ("model_chain", "llm"), ("tts_chain", "tts"))


@dataclass(frozen=True)
class PipelineProblem:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def _url_problem(url: str, schemes: Sequence[str]) -> str | None:
    parsed = urlparse(url)
    if parsed.scheme not in schemes or not parsed.netloc:
        return f"base_url {url!r} is not an absolute {' / '.join(schemes)} URL"
    return None


def _entry_problems(
    entry: STTEntry | ModelChainEntry | TTSEntry,
    kind: Kind,
    path: str,
    config: VoicePipelineConfig,
    settings: SettingsWithKeys,
) -> list[PipelineProblem]:
    provider = PROVIDERS.get(entry.provider)
    if provider is None:
        known = ", ".join(provider_names(kind))
        return [PipelineProblem(f"{path}.provider", f"unknown provider {entry.provider!r} (known: {known})")]
    if not provider.supports(kind):
        known = ", ".join(provider_names(kind))
        return [
            PipelineProblem(
                f"{path}.provider",
                f"provider {entry.provider!r} offers no {kind.upper()} (providers with {kind.upper()}: {known})",
            )
        ]

    problems: list[PipelineProblem] = []
    if provider.api_key(settings) is None:
        problems.append(
            PipelineProblem(
                f"{path}.provider",
                f"provider {entry.provider!r} needs an API key: set {provider.key_env}",
            )
        )
    if entry.base_url is None:
        if provider.requires_base_url:
            problems.append(
                PipelineProblem(
                    f"{path}.base_url",
                    f"provider {entry.provider!r} needs base_url (the server's OpenAI-compatible /v1 URL)",
                )
            )
    elif (reason := _url_problem(entry.base_url, provider.url_schemes)) is not None:
        problems.append(PipelineProblem(f"{path}.base_url", reason))

    signature = provider.stt_signature if isinstance(entry, STTEntry) else provider.tts_signature
    if isinstance(entry, (STTEntry, TTSEntry)) and signature is not None:
        problems.extend(_data_problems(entry.provider_data, signature, f"{path}.provider_data"))

    if isinstance(entry, TTSEntry):
        if entry.voice_id and _is_uuid(entry.voice_id):
            problems.append(
                PipelineProblem(
                    f"{path}.voice_id",
                    f"{entry.voice_id!r} is a platform voice-catalog id; name the provider's own voice "
                    f"(e.g. alloy for openai, aura-2-thalia-en for deepgram)",
                )
            )
        speed_range = provider.tts_speed_range
        if speed_range is not None and config.tts_speed != 1.0:
            low, high = speed_range
            if not low <= config.tts_speed <= high:
                problems.append(
                    PipelineProblem(
                        "tts_speed",
                        f"{config.tts_speed} is outside {entry.provider!r}'s range {low}..{high} (used by {path})",
                    )
                )
        if entry.provider == "deepgram" and entry.model and entry.voice_id and entry.model != entry.voice_id:
            problems.append(
                PipelineProblem(
                    f"{path}.voice_id",
                    f"deepgram names the voice by its model; model {entry.model!r} and voice_id "
                    f"{entry.voice_id!r} disagree (set one, e.g. model: {deepgram_tts_model(entry)})",
                )
            )
    return problems


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _data_problems(options: Mapping[str, Any], signature: PluginSignature, path: str) -> list[PipelineProblem]:
    return [PipelineProblem(f"{path}.{key}", reason) for key, reason in option_problems(options, signature)]


def _tuning_problems(config: VoicePipelineConfig) -> list[PipelineProblem]:
    """`voice_tuning` goes to the primary voice's constructor beside its provider data."""
    primary = config.tts_chain[0]
    provider = PROVIDERS.get(primary.provider)
    if not config.voice_tuning or provider is None or provider.tts_signature is None:
        return []
    problems = _data_problems(config.voice_tuning, provider.tts_signature, "voice_tuning")
    for key in sorted(set(config.voice_tuning) & set(primary.provider_data)):
        problems.append(PipelineProblem(f"voice_tuning.{key}", "also set in tts_chain[0].provider_data (give one)"))
    return problems


def pipeline_problems(config: VoicePipelineConfig, settings: SettingsWithKeys, *, where: str) -> list[PipelineProblem]:
    """Every problem, each with its dotted field path under `where` (e.g. `pipeline.model_chain[1].provider`)."""
    problems: list[PipelineProblem] = []
    for chain_name, kind in _CHAINS:
        chain: Sequence[STTEntry | ModelChainEntry | TTSEntry] = getattr(config, chain_name)
        for index, entry in enumerate(chain):
            problems.extend(_entry_problems(entry, kind, f"{chain_name}[{index}]", config, settings))

    problems.extend(_tuning_problems(config))
    problems.extend(_data_problems(config.vad_provider_data, VAD_SIGNATURE, "vad_provider_data"))

    if config.turn_detection == "turn_detector" and config.multilingual_enabled:
        problems.append(
            PipelineProblem(
                "turn_detection",
                "the offline turn-detector model is tuned per language and a multilingual call has none fixed; "
                "use turn_detection vad or stt",
            )
        )
    elif config.turn_detection == "turn_detector" and not turn_detector_supports(config.language):
        problems.append(
            PipelineProblem(
                "turn_detection",
                f"the offline turn-detector model has no support for language {config.language!r}; "
                "use turn_detection vad or stt",
            )
        )
    if (
        config.silence_timeout_ms
        and config.silence_end_action == "speak_then_hangup"
        and not config.silence_end_message
    ):
        problems.append(
            PipelineProblem(
                "silence_end_message",
                "silence_end_action speak_then_hangup needs silence_end_message "
                "(or use silence_end_action hangup_immediate)",
            )
        )

    prefix = f"{where}." if where else ""
    return [PipelineProblem(prefix + p.field, p.reason) for p in problems]
