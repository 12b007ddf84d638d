"""The platform's `stt_provider_data`, `tts_provider_data`, `vad_provider_data` and `voice_tuning`: keyword arguments
for a plugin's constructor, checked against that constructor's own signature before any call uses them.

A key the constructor does not take (a typo) is a problem naming the key and the keys it does take; a key the
pipeline already sets from a config field (`model`, `language`, `speed`, the API key...) is a problem naming that
field; a value of the wrong type is a problem naming the expected type. `checked_options` returns the values
pydantic validated against the constructor's annotations, so a plugin only ever receives what its signature
declares.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError


@dataclass(frozen=True)
class PluginSignature:
    """A plugin constructor and the parameters the pipeline sets itself (parameter -> the field that sets it)."""

    plugin: Callable[..., Any]
    reserved: Mapping[str, str]


class ProviderDataError(ValueError):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))


@functools.cache
def _parameters(plugin: Callable[..., Any]) -> dict[str, Any]:
    """Keyword parameters of the constructor and their resolved annotations (Any where one cannot be resolved)."""
    # a class is checked by its constructor: the parameters a caller passes, without `self`
    target: Callable[..., Any] = getattr(plugin, "__init__") if isinstance(plugin, type) else plugin  # noqa: B009  # mypy refuses `.__init__` on a type
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation naming something the module imports only for type checking
        hints = {}
    return {
        name: hints.get(name, Any)
        for name, p in inspect.signature(target).parameters.items()
        if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return text.replace("livekit.agents.types.NotGiven", "not given").replace("<class '", "").replace("'>", "")


def plugin_name(plugin: Callable[..., Any]) -> str:
    """`openai.TTS`, `deepgram.STT`, `inference.VAD`: the name its users import it by."""
    parts = getattr(plugin, "__module__", "").split(".")
    anchor = next((parts.index(a) for a in ("plugins", "agents") if a in parts), None)
    package = parts[anchor + 1] if anchor is not None and anchor + 1 < len(parts) else parts[0]
    return f"{package}.{getattr(plugin, '__qualname__', plugin)}"


def option_problems(options: Mapping[str, Any], signature: PluginSignature) -> list[tuple[str, str]]:
    """(key, reason) for every key of `options` the plugin cannot take as given."""
    parameters = _parameters(signature.plugin)
    problems: list[tuple[str, str]] = []
    for key, value in options.items():
        if key in signature.reserved:
            problems.append((key, f"set by {signature.reserved[key]}, not here"))
        elif key not in parameters:
            known = ", ".join(sorted(k for k in parameters if k not in signature.reserved))
            problems.append((key, f"{plugin_name(signature.plugin)} takes no {key!r} (it takes: {known})"))
        else:
            try:
                _adapter(parameters[key]).validate_python(value)
            except ValidationError:
                problems.append((key, f"{value!r} is not a valid {_type_name(parameters[key])}"))
    return problems


def checked_options(options: Mapping[str, Any], signature: PluginSignature) -> dict[str, Any]:
    """The options as the constructor's annotations validate them; `ProviderDataError` when any cannot be used."""
    problems = option_problems(options, signature)
    if problems:
        raise ProviderDataError(problems)
    parameters = _parameters(signature.plugin)
    return {key: _adapter(parameters[key]).validate_python(value) for key, value in options.items()}
