"""Settings the door and the worker both read: mode, LiveKit, the dispatch grant's secret and issuer, the catalog,
the database, context-variable bounds. Each deployable's own settings class extends `SharedSettings`
(worker/settings.py, door/settings.py); both are read from the environment and `.env`.

Built lazily, never at import time, so tests and the CLI can construct their own. Production mode refuses
placeholder or missing secrets at start-up and names the variable; dev mode falls back to the well-known
`livekit-server --dev` pair and a clearly-marked dev signing secret.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXAMPLE_CATALOG = Path(__file__).resolve().parent.parent / "catalog" / "examples"

DEV_LIVEKIT_API_KEY = "devkey"
DEV_LIVEKIT_API_SECRET = "secret"
# Marked so that nobody mistakes it for a real secret; refused outside dev mode.
DEV_DISPATCH_SIGNING_SECRET = "dev-only-insecure-dispatch-signing-secret-do-not-use-in-production"

# Values that mean "somebody copied .env.example and forgot to fill it in".
_PLACEHOLDERS = {"", "changeme", "change-me", "changethis", "secret", "devkey", "xxx", "todo", "placeholder"}
_MIN_SIGNING_SECRET_LEN = 32


class Mode(StrEnum):
    DEV = "dev"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """Settings are missing or unusable: one problem per line, each naming the environment variable, what is wrong
    and how to fix it (never the value: it may be a secret)."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# How a newcomer gets a working set-up without real secrets; appended wherever dev mode would fix the problem.
DEV_MODE_HINT = "or set VOICE_WORKER_MODE=dev (in .env or the environment) to use the livekit-server --dev defaults"


class SharedSettings(BaseSettings):
    # env_ignore_empty: `.env` starts as a copy of .env.example, whose secrets are `KEY=` lines; an empty value
    # must mean "not set" (dev defaults apply, None stays None), never an empty key or the path "".
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    mode: Mode = Field(Mode.PRODUCTION, validation_alias="VOICE_WORKER_MODE")
    agent_name: str = Field("voice-worker", min_length=1, validation_alias="AGENT_NAME")

    livekit_url: str = Field("ws://localhost:7880", validation_alias="LIVEKIT_URL")
    livekit_api_key: SecretStr | None = Field(None, validation_alias="LIVEKIT_API_KEY")
    livekit_api_secret: SecretStr | None = Field(None, validation_alias="LIVEKIT_API_SECRET")

    dispatch_signing_secret: SecretStr | None = Field(None, validation_alias="DISPATCH_SIGNING_SECRET")
    dispatch_issuer: str = Field("voice-worker-door", validation_alias="DISPATCH_ISSUER")

    catalog_path: Path = Field(EXAMPLE_CATALOG, validation_alias="CATALOG_PATH")

    # Session records (the door creates the row, the worker completes it) and end-user memory (records/).
    database_url: str = Field("sqlite:///var/voice-worker.db", validation_alias="DATABASE_URL")
    memory_retention_days: int = Field(180, ge=1, le=3650, validation_alias="MEMORY_RETENTION_DAYS")

    # Bounds for context variables whose ContextVarSpec declares none of its own (catalog/context_vars.py): the
    # door refuses a seed beyond them, the worker refuses a dispatch carrying one (a grant minted elsewhere).
    context_var_max_string_chars: int = Field(1_024, ge=1, le=100_000, validation_alias="CONTEXT_VAR_MAX_STRING_CHARS")
    context_var_max_abs_int: int = Field(2**53 - 1, ge=1, le=2**63 - 1, validation_alias="CONTEXT_VAR_MAX_ABS_INT")
    context_var_max_abs_float: float = Field(1e15, gt=0, le=1e308, validation_alias="CONTEXT_VAR_MAX_ABS_FLOAT")

    # Provider keys. The worker sends them; the door only asks whether they are set, so that its call page can
    # name the variable missing for an agent (pipelines/providers.py owns which provider needs which).
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    deepgram_api_key: SecretStr | None = Field(None, validation_alias="DEEPGRAM_API_KEY")
    # Self-hosted OpenAI-compatible servers usually accept any key; operators may still set one.
    openai_compatible_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_COMPATIBLE_API_KEY")

    @model_validator(mode="after")
    def _fill_dev_defaults(self) -> SharedSettings:
        if self.mode is Mode.DEV:
            if self.livekit_api_key is None:
                self.livekit_api_key = SecretStr(DEV_LIVEKIT_API_KEY)
            if self.livekit_api_secret is None:
                self.livekit_api_secret = SecretStr(DEV_LIVEKIT_API_SECRET)
            if self.dispatch_signing_secret is None:
                self.dispatch_signing_secret = SecretStr(DEV_DISPATCH_SIGNING_SECRET)
        return self

    @property
    def is_dev(self) -> bool:
        return self.mode is Mode.DEV

    def require_production_secrets(self, *, dev_hint: str = DEV_MODE_HINT) -> None:
        """Fail fast: raise SettingsError with one line per unusable secret (never its value).

        `dev_hint` says how to get dev mode from the command at hand (`voice-worker start` is production by
        definition; its alternative is `voice-worker dev`)."""
        if self.is_dev:
            return
        how = {
            "LIVEKIT_API_KEY": "set it to your LiveKit project's API key",
            "LIVEKIT_API_SECRET": "set it to your LiveKit project's API secret",
            "DISPATCH_SIGNING_SECRET": f"set it to a random string of at least {_MIN_SIGNING_SECRET_LEN} characters "
            '(python -c "import secrets; print(secrets.token_urlsafe(48))")',
        }
        problems: list[str] = []
        for env, value in (
            ("LIVEKIT_API_KEY", self.livekit_api_key),
            ("LIVEKIT_API_SECRET", self.livekit_api_secret),
            ("DISPATCH_SIGNING_SECRET", self.dispatch_signing_secret),
        ):
            if value is None:
                problems.append(f"{env} is not set (production mode): {how[env]}, {dev_hint}")
            elif value.get_secret_value().strip().lower() in _PLACEHOLDERS:
                problems.append(f"{env} is a placeholder (production mode): {how[env]}, {dev_hint}")
        signing = self.dispatch_signing_secret.get_secret_value() if self.dispatch_signing_secret else ""
        if signing == DEV_DISPATCH_SIGNING_SECRET:
            problems.append(
                f"DISPATCH_SIGNING_SECRET is the dev-only default (production mode): {how['DISPATCH_SIGNING_SECRET']}"
            )
        elif signing and signing.strip().lower() not in _PLACEHOLDERS and len(signing) < _MIN_SIGNING_SECRET_LEN:
            problems.append(
                f"DISPATCH_SIGNING_SECRET is shorter than {_MIN_SIGNING_SECRET_LEN} characters: "
                f"{how['DISPATCH_SIGNING_SECRET']}"
            )
        if signing and self.livekit_api_secret is not None and signing == self.livekit_api_secret.get_secret_value():
            problems.append(
                "DISPATCH_SIGNING_SECRET equals LIVEKIT_API_SECRET; use a distinct secret so a leaked "
                "LiveKit secret cannot forge dispatches"
            )
        if problems:
            raise SettingsError(*problems)

    def signing_secret(self) -> str:
        if self.dispatch_signing_secret is None:
            raise SettingsError(
                "DISPATCH_SIGNING_SECRET is not set (production mode): set it to a random string of at least "
                f"{_MIN_SIGNING_SECRET_LEN} characters, {DEV_MODE_HINT}"
            )
        return self.dispatch_signing_secret.get_secret_value()

    def livekit_credentials(self) -> tuple[str, str]:
        if self.livekit_api_key is None or self.livekit_api_secret is None:
            missing = "LIVEKIT_API_KEY" if self.livekit_api_key is None else "LIVEKIT_API_SECRET"
            raise SettingsError(
                f"{missing} is not set (production mode): set it from your LiveKit project, {DEV_MODE_HINT}"
            )
        return self.livekit_api_key.get_secret_value(), self.livekit_api_secret.get_secret_value()

    def provider_api_key(self, env_name: str) -> str | None:
        """The key for a provider, by the environment variable that names it (pipelines/providers.py's
        `Provider.key_env`); None when unset or when no setting reads that variable."""
        for name, info in type(self).model_fields.items():
            if info.validation_alias == env_name:
                value = getattr(self, name)
                return value.get_secret_value() if isinstance(value, SecretStr) else None
        return None


S = TypeVar("S", bound=SharedSettings)


def load(cls: type[S], **overrides: Any) -> S:
    """`cls` from the environment and `.env` (overrides by variable name), or SettingsError with one line per
    invalid variable: its name, pydantic's reason and where to fix it. The input is never echoed (a secret)."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            variable = ".".join(map(str, error["loc"])) or "settings"
            reason = str(error["msg"]).rstrip(".")
            problems.append(f"{variable}: {reason}; fix {variable} in .env or the environment (see .env.example)")
        raise SettingsError(*problems) from None
