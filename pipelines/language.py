"""Which language a call is heard and answered in: `language`, `locale`, `multilingual_enabled` and
`multilingual_languages`.

- Heard: the STT gets `stt_chain[i].language`, else (multilingual) the list of languages the caller may speak or
  nothing, which asks the provider to detect the language, else `locale` (it refines `language` with a region:
  `en-GB`), else `language`. Providers take what they can (pipelines/providers.py): Deepgram's code-switching
  `multi` mode; OpenAI's detection, or its candidate list on the models that take one.
- Answered: the reply language is the LLM's to choose, so the instructions say it: on a multilingual call, reply
  in the language of the caller's latest message; with a `locale`, use its language and conventions. The TTS
  reads whatever language the LLM wrote (an OpenAI voice speaks them all; `check` warns about voices that do not).
"""

from __future__ import annotations

from livekit.agents.language import LanguageCode

from catalog.pipeline_config import STTEntry, VoicePipelineConfig
from pipelines.providers import STTLanguage


def stt_language(config: VoicePipelineConfig, entry: STTEntry) -> STTLanguage:
    if entry.language:
        return entry.language
    if config.multilingual_enabled:
        return config.multilingual_languages or None
    return config.locale or config.language


def language_name(code: str) -> str:
    """`spanish (es)`; the bare code when livekit does not know it."""
    name = LanguageCode(code).to_language_name()
    return f"{name} ({code})" if name else code


def reply_language_note(config: VoicePipelineConfig) -> str | None:
    """What the instructions say about the language of the reply, or None when the call has one fixed language
    and no locale (the prompt's own language decides, as before)."""
    if config.multilingual_enabled:
        spoken = (
            "any language"
            if not config.multilingual_languages
            else ", ".join(language_name(c) for c in config.multilingual_languages)
        )
        return (
            f"The caller may speak {spoken}. Always reply in the language of the caller's most recent message, "
            "and switch when the caller switches."
        )
    if config.locale:
        return (
            f"The caller's locale is {config.locale}: reply in {language_name(LanguageCode(config.locale).language)} "
            "and use that locale's spelling and its number, date and currency formats."
        )
    return None
