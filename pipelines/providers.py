"""The providers a pipeline may name, and how each one becomes a livekit-agents plugin object.

A provider is one `Provider` entry in `PROVIDERS`: which environment variable holds its key, whether
that key is required, whether it needs a `base_url`, which of STT / LLM / TTS it offers (a builder per
kind) and the TTS speed range it accepts. Validation (`pipelines.validate`) and the builder
(`pipelines.builder`) read only this table, so adding a provider touches this file alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from livekit.agents import llm, stt, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions
from livekit.plugins import deepgram, openai

from catalog.pipeline_config import ModelChainEntry, STTEntry, TTSEntry
from pipelines.http_clients import openai_client
from pipelines.provider_data import PluginSignature

Kind = Literal["stt", "llm", "tts"]
KINDS: tuple[Kind, ...] = ("stt", "llm", "tts")

OPENAI_STT_MODEL = "gpt-4o-mini-transcribe"
OPENAI_TTS_MODEL = "gpt-4o-mini-tts"
OPENAI_TTS_VOICE = "alloy"
DEEPGRAM_STT_MODEL = "nova-3"
DEEPGRAM_TTS_MODEL = "aura-2-andromeda-en"

# Self-hosted OpenAI-compatible servers (Ollama, vLLM, llama.cpp) ignore the key, but the OpenAI client
# refuses to send a request without one.
UNUSED_KEY = "unused"


# livekit's STT, LLM and TTS are generic in the extra events a plugin emits (a FallbackAdapter's availability
# events; none for most plugins), so `[Any]` below stands for "any provider's" object.


class SettingsWithKeys(Protocol):
    def provider_api_key(self, env_name: str) -> str | None: ...


# One language; several the caller may speak (a multilingual call with a list); None: whatever is spoken.
STTLanguage = str | tuple[str, ...] | None


class STTBuilder(Protocol):
    """`options` are the entry's checked provider data (pipelines/provider_data.py)."""

    def __call__(
        self, entry: STTEntry, *, api_key: str, language: STTLanguage, options: Mapping[str, Any]
    ) -> stt.STT[Any]: ...


class LLMBuilder(Protocol):
    def __call__(self, entry: ModelChainEntry, *, api_key: str) -> llm.LLM[Any]: ...


class TTSBuilder(Protocol):
    def __call__(self, entry: TTSEntry, *, api_key: str, speed: float, options: Mapping[str, Any]) -> tts.TTS[Any]: ...


class _OwnsItsClient:
    """For an OpenAI plugin class: builds it over a client of the process's TLS context
    (pipelines/http_clients.py) and closes that client with it. The plugins close only a client they made
    themselves, and `openai.STT` never closes its own."""

    def __init__(self, *, api_key: str, base_url: str | None, **kwargs: Any) -> None:
        self._http = openai_client(api_key=api_key, base_url=base_url)
        super().__init__(client=self._http, **kwargs)  # type: ignore[call-arg]  # a mixin: super() is the plugin class

    async def aclose(self) -> None:
        await super().aclose()  # type: ignore[misc]  # a mixin: super() is the plugin class
        await self._http.close()


class OpenAIChatLLM(_OwnsItsClient, openai.LLM):
    """`openai.LLM` over the process's TLS context, whose requests carry the chain entry's own
    `request_timeout_ms`.

    AgentSession and `llm.FallbackAdapter` hand every LLM one timeout in `conn_options`, and the plugin
    turns exactly that value into the request's httpx timeout (a client-level timeout is overridden),
    so a per-entry timeout has to replace it on the way in.
    """

    def __init__(self, *, request_timeout_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._request_timeout_s = request_timeout_s

    @property
    def request_timeout_s(self) -> float | None:
        return self._request_timeout_s

    def chat(  # type: ignore[override]  # keyword-only; every argument but conn_options passes through
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS, **kwargs: Any
    ) -> llm.LLMStream:
        if self._request_timeout_s is not None:
            conn_options = dataclasses.replace(conn_options, timeout=self._request_timeout_s)
        return super().chat(conn_options=conn_options, **kwargs)


class OpenAISTT(_OwnsItsClient, openai.STT):
    """`openai.STT` over the process's TLS context."""


class OpenAITTS(_OwnsItsClient, openai.TTS):
    """`openai.TTS` over the process's TLS context."""


def _given(value: Any) -> Any:
    return NOT_GIVEN if value is None else value


def _openai_llm(max_tokens_field: Literal["max_completion_tokens", "max_tokens"]) -> LLMBuilder:
    def build(entry: ModelChainEntry, *, api_key: str) -> llm.LLM[Any]:
        cfg = entry.config
        kwargs: dict[str, Any] = {}
        if cfg.max_tokens is not None:
            # api.openai.com wants max_completion_tokens (max_tokens is refused by reasoning models);
            # llama.cpp, Ollama and vLLM all honour the older max_tokens.
            if max_tokens_field == "max_completion_tokens":
                kwargs["max_completion_tokens"] = cfg.max_tokens
            else:
                kwargs["extra_body"] = {"max_tokens": cfg.max_tokens}
        return OpenAIChatLLM(
            request_timeout_s=cfg.request_timeout_ms / 1000 if cfg.request_timeout_ms is not None else None,
            model=entry.model,
            api_key=api_key,
            base_url=entry.base_url,
            temperature=_given(cfg.temperature),
            top_p=_given(cfg.top_p),
            **kwargs,
        )

    return build


# What the pipeline sets on each plugin itself; provider data naming one of these is refused, naming the field.
_KEY = "the provider's API key variable"
_STT_SET = {
    "model": "stt_chain[i].model (stt_model)",
    "language": "language / locale / stt_chain[i].language",
    "detect_language": "multilingual_enabled",
    "api_key": _KEY,
    "base_url": "stt_chain[i].base_url",
}
_TTS_SET = {"model": "tts_chain[i].model", "speed": "tts_speed", "api_key": _KEY, "base_url": "tts_chain[i].base_url"}
# the worker's own HTTP clients: one TLS context per process (pipelines/http_clients.py) / aiohttp per job
_CLIENT = {"client": "the worker (one HTTP client per provider, over the process's TLS context)"}
_HTTP_SESSION = {"http_session": "livekit (the job's HTTP session)"}
OPENAI_STT_SIGNATURE = PluginSignature(openai.STT, {**_STT_SET, **_CLIENT})
OPENAI_TTS_SIGNATURE = PluginSignature(openai.TTS, {**_TTS_SET, "voice": "tts_chain[i].voice_id", **_CLIENT})
DEEPGRAM_STT_SIGNATURE = PluginSignature(deepgram.STT, {**_STT_SET, **_HTTP_SESSION})
DEEPGRAM_TTS_SIGNATURE = PluginSignature(deepgram.TTS, {**_TTS_SET, **_HTTP_SESSION})


# OpenAI transcription models that take a list of candidate languages (older ones take one, or detect)
OPENAI_STT_LANGUAGE_LISTS = ("gpt-transcribe", "gpt-live-transcribe")


def _openai_stt(entry: STTEntry, *, api_key: str, language: STTLanguage, options: Mapping[str, Any]) -> stt.STT[Any]:
    model = entry.model or OPENAI_STT_MODEL
    chosen: dict[str, Any]
    if isinstance(language, str):
        chosen = {"language": language}
    elif language and model.startswith(OPENAI_STT_LANGUAGE_LISTS):
        chosen = {"language": list(language)}
    else:
        chosen = {"detect_language": True}
    return OpenAISTT(model=model, api_key=api_key, base_url=entry.base_url, **chosen, **options)


def _openai_tts(entry: TTSEntry, *, api_key: str, speed: float, options: Mapping[str, Any]) -> tts.TTS[Any]:
    return OpenAITTS(
        model=entry.model or OPENAI_TTS_MODEL,
        voice=entry.voice_id or OPENAI_TTS_VOICE,
        speed=speed,
        api_key=api_key,
        base_url=entry.base_url,
        **options,
    )


# Deepgram's streaming code-switching mode: the caller may change language mid-call, each result names its own.
DEEPGRAM_MULTILINGUAL = "multi"


def _deepgram_stt(entry: STTEntry, *, api_key: str, language: STTLanguage, options: Mapping[str, Any]) -> stt.STT[Any]:
    kwargs: dict[str, Any] = {"language": language if isinstance(language, str) else DEEPGRAM_MULTILINGUAL}
    if entry.base_url is not None:
        kwargs["base_url"] = entry.base_url
    return deepgram.STT(model=entry.model or DEEPGRAM_STT_MODEL, api_key=api_key, **kwargs, **options)


def deepgram_tts_model(entry: TTSEntry) -> str:
    """Deepgram names a voice by its model (`aura-2-thalia-en`), so either field may carry it."""
    return entry.model or entry.voice_id or DEEPGRAM_TTS_MODEL


def _deepgram_tts(entry: TTSEntry, *, api_key: str, speed: float, options: Mapping[str, Any]) -> tts.TTS[Any]:
    kwargs: dict[str, Any] = {}
    if entry.base_url is not None:
        kwargs["base_url"] = entry.base_url
    # Deepgram rejects `speed` for voices other than Aura-2 English/Spanish; leave it out at 1.0.
    return deepgram.TTS(
        model=deepgram_tts_model(entry),
        api_key=api_key,
        speed=None if speed == 1.0 else speed,
        **kwargs,
        **options,
    )


@dataclass(frozen=True)
class Provider:
    name: str
    key_env: str
    key_required: bool = True
    requires_base_url: bool = False
    # base_url schemes the plugin can talk to
    url_schemes: tuple[str, ...] = ("http", "https")
    # (min, max) accepted by the provider when speed is not 1.0
    tts_speed_range: tuple[float, float] | None = None
    build_stt: STTBuilder | None = None
    build_llm: LLMBuilder | None = None
    build_tts: TTSBuilder | None = None
    # the plugin constructors provider data is checked against
    stt_signature: PluginSignature | None = None
    tts_signature: PluginSignature | None = None
    # language codes its STT understands in multilingual mode (None: any the model detects)
    multilingual_stt_languages: frozenset[str] | None = None
    # whether one TTS voice speaks every language of a multilingual call
    multilingual_tts: bool = True

    def supports(self, kind: Kind) -> bool:
        return self.builder(kind) is not None

    def builder(self, kind: Kind) -> Callable[..., Any] | None:
        return {"stt": self.build_stt, "llm": self.build_llm, "tts": self.build_tts}[kind]

    def api_key(self, settings: SettingsWithKeys) -> str | None:
        """The key to send; a placeholder when the key is optional and unset; None when missing."""
        key = settings.provider_api_key(self.key_env)
        if key:
            return key
        return None if self.key_required else UNUSED_KEY


PROVIDERS: Mapping[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            name="openai",
            key_env="OPENAI_API_KEY",
            tts_speed_range=(0.25, 4.0),
            build_stt=_openai_stt,
            build_llm=_openai_llm("max_completion_tokens"),
            build_tts=_openai_tts,
            stt_signature=OPENAI_STT_SIGNATURE,
            tts_signature=OPENAI_TTS_SIGNATURE,
        ),
        Provider(
            name="openai_compatible",
            key_env="OPENAI_COMPATIBLE_API_KEY",
            key_required=False,
            requires_base_url=True,
            tts_speed_range=(0.25, 4.0),
            build_stt=_openai_stt,
            build_llm=_openai_llm("max_tokens"),
            build_tts=_openai_tts,
            stt_signature=OPENAI_STT_SIGNATURE,
            tts_signature=OPENAI_TTS_SIGNATURE,
        ),
        Provider(
            name="deepgram",
            key_env="DEEPGRAM_API_KEY",
            url_schemes=("http", "https", "ws", "wss"),
            tts_speed_range=(0.7, 1.5),
            build_stt=_deepgram_stt,
            build_tts=_deepgram_tts,
            stt_signature=DEEPGRAM_STT_SIGNATURE,
            tts_signature=DEEPGRAM_TTS_SIGNATURE,
            # Nova-3's code-switching ("multi") languages
            multilingual_stt_languages=frozenset({"en", "es", "fr", "de", "hi", "ru", "pt", "ja", "it", "nl"}),
            # an Aura voice speaks the one language its model is named for (aura-2-thalia-en)
            multilingual_tts=False,
        ),
    )
}


def provider_names(kind: Kind) -> list[str]:
    return sorted(name for name, p in PROVIDERS.items() if p.supports(kind))
