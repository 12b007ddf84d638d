"""The HTTP clients of the OpenAI-style providers, built over one TLS context per process.

Left to itself, every `openai.LLM` / `openai.STT` / `openai.TTS` makes its own httpx client, and every httpx
client builds an `ssl.SSLContext` by loading the system CA bundle again: 35-80 ms of CPU on the event loop,
per provider, per call, before the greeting can start (benchmarks/call_start.py measured it as most of a
call's start). An `SSLContext` is safe to share between clients, threads and event loops, so the process
loads the bundle once (`tls_context`, first used by the worker's setup function) and each call still gets
clients of its own: an httpx client belongs to the event loop that first uses it, and the thread executor
runs every call on a loop of its own.

The client settings are the plugins' own (timeouts, pool limits, no SDK retries: livekit's
`APIConnectOptions` and the FallbackAdapters decide retries).
"""

from __future__ import annotations

import functools
import ssl

import httpx2 as httpx  # the httpx fork livekit's OpenAI plugin is built on
import openai

# what livekit.plugins.openai gives the clients it builds itself
_TIMEOUT = httpx.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0)
_LIMITS = httpx.Limits(max_connections=50, max_keepalive_connections=50, keepalive_expiry=120)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's TLS context for provider requests: httpx's default verification (system CA bundle,
    SSL_CERT_FILE / SSL_CERT_DIR honoured), built once."""
    return httpx.create_ssl_context()


def openai_client(*, api_key: str, base_url: str | None) -> openai.AsyncClient:
    """A new OpenAI SDK client over the process's TLS context; the caller closes it."""
    return openai.AsyncClient(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        http_client=httpx.AsyncClient(verify=tls_context(), timeout=_TIMEOUT, limits=_LIMITS, follow_redirects=True),
    )
