"""How platform tools run in this process: the egress policy, caps, secrets and the filler line, from settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tools.api_call import HttpLimits
from tools.ssrf import EgressPolicy
from tools.templating import SecretSource


class ToolSettings(Protocol):
    """The settings tools read (worker/settings.py provides them); a protocol, so tools/ need not import the
    worker process package."""

    @property
    def is_dev(self) -> bool: ...

    tool_egress_allowlist: str
    tool_max_response_bytes: int
    tool_max_result_chars: int
    tool_env_prefix: str
    tool_filler_after_ms: int
    tool_filler_text: str
    sip_outbound_trunk_id: str | None


DEFAULT_FILLER_TEXT = "One moment while I look that up."


@dataclass(frozen=True)
class ToolConfig:
    policy: EgressPolicy = field(default_factory=EgressPolicy)
    limits: HttpLimits = field(default_factory=HttpLimits)
    secrets: SecretSource = field(default_factory=lambda: SecretSource(os.environ, "TOOL_"))
    # A tool still running after this long gets the filler line (0: never).
    filler_after_s: float = 1.5
    filler_text: str = DEFAULT_FILLER_TEXT
    # The outbound SIP trunk a warm transfer dials the destination through.
    sip_outbound_trunk_id: str | None = None

    @classmethod
    def from_settings(cls, settings: ToolSettings, environ: Mapping[str, str] | None = None) -> ToolConfig:
        return cls(
            policy=EgressPolicy.from_allowlist(
                settings.tool_egress_allowlist.split(","), allow_loopback=settings.is_dev
            ),
            limits=HttpLimits(
                max_response_bytes=settings.tool_max_response_bytes, max_result_chars=settings.tool_max_result_chars
            ),
            secrets=SecretSource(os.environ if environ is None else environ, settings.tool_env_prefix),
            filler_after_s=settings.tool_filler_after_ms / 1000,
            filler_text=settings.tool_filler_text,
            sip_outbound_trunk_id=settings.sip_outbound_trunk_id,
        )
