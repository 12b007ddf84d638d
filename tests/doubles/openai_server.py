"""A local HTTP server that speaks OpenAI's chat, speech and transcription wire formats.

The worker builds real `livekit.plugins.openai` objects pointed at a `base_url`; this double lets
tests script what the "provider" answers (text, tool calls, latency, failures) and see what
it was asked.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import math
import re
import time
import wave
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from aiohttp import web

from tests.doubles.loopback_server import LoopbackServer

CHAT_PATH = "/v1/chat/completions"
SPEECH_PATH = "/v1/audio/speech"
TRANSCRIPTION_PATH = "/v1/audio/transcriptions"
MODELS_PATH = "/v1/models"

# OpenAI's speech endpoint always renders 24 kHz mono; the livekit plugin hard-codes the same rate.
SPEECH_SAMPLE_RATE = 24_000
_REDACTED = "<redacted>"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class Reply:
    """One scripted chat completion; failure fields win over content fields."""

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    ttft_ms: float = 0.0
    token_interval_ms: float = 0.0
    status: int = 200
    error_message: str = "scripted failure"
    hang: bool = False
    # Stream this many content tokens, then go silent with the connection open.
    hang_after_tokens: int | None = None
    # Stream about half of the content tokens, then drop the TCP connection.
    disconnect_mid_stream: bool = False
    finish_reason: str | None = None


@dataclass(frozen=True)
class SpeechReply:
    ttfb_ms: float = 0.0
    chunk_interval_ms: float = 0.0
    status: int = 200
    error_message: str = "scripted failure"
    hang: bool = False
    # None: proportional to the input text (see OpenAIServerDouble.speech_seconds_per_char).
    duration_s: float | None = None


@dataclass(frozen=True)
class TranscriptionReply:
    text: str = "hello"
    latency_ms: float = 0.0
    status: int = 200
    error_message: str = "scripted failure"
    hang: bool = False
    language: str = "english"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    model: str | None
    # JSON body, or the multipart form fields (without the file) for transcriptions.
    body: dict[str, Any]
    # The Authorization value is replaced so recorded requests never hold a key.
    headers: dict[str, str]
    file: bytes | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.tools]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def system_prompt(self) -> str:
        return "\n".join(
            _content_text(m.get("content")) for m in self.messages if m.get("role") in ("system", "developer")
        )

    @property
    def last_user_text(self) -> str:
        return _last_user_text(self.messages)


R = TypeVar("R")
Scripted = R | Callable[[dict[str, Any]], R]


class _Script(Generic[R]):
    """Per-model queues and responders; `None` as the model means "any model"."""

    def __init__(self) -> None:
        self._queues: dict[str | None, deque[Any]] = {}
        self._responders: dict[str | None, Callable[[dict[str, Any]], Any]] = {}

    def push(self, model: str | None, items: Sequence[Any]) -> None:
        self._queues.setdefault(model, deque()).extend(items)

    def set_responder(self, model: str | None, fn: Callable[[dict[str, Any]], Any] | None) -> None:
        if fn is None:
            self._responders.pop(model, None)
        else:
            self._responders[model] = fn

    def take(self, model: str | None, body: dict[str, Any]) -> Any | None:
        for key in (model, None):
            queue = self._queues.get(key)
            if queue:
                item = queue.popleft()
                return item(body) if callable(item) else item
        for key in (model, None):
            fn = self._responders.get(key)
            if fn is not None:
                return fn(body)
        return None

    def pending(self, model: str | None = None) -> int:
        return len(self._queues.get(model) or ())


class OpenAIServerDouble(LoopbackServer):
    """`async with OpenAIServerDouble() as oai:` then point plugins at `oai.base_url`."""

    def __init__(
        self,
        *,
        speech_seconds_per_char: float = 0.06,
        min_speech_s: float = 0.2,
        speech_chunk_bytes: int = 4800,
        default_transcript: str = "hello",
    ) -> None:
        super().__init__()
        self.speech_seconds_per_char = speech_seconds_per_char
        self.min_speech_s = min_speech_s
        self.speech_chunk_bytes = speech_chunk_bytes
        self.default_transcript = default_transcript
        self.requests: list[RecordedRequest] = []
        self._chat = _Script[Reply]()
        self._speech = _Script[SpeechReply]()
        self._transcription = _Script[TranscriptionReply]()
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(CHAT_PATH, self._handle_chat)
        app.router.add_post(SPEECH_PATH, self._handle_speech)
        app.router.add_post(TRANSCRIPTION_PATH, self._handle_transcription)
        app.router.add_get(MODELS_PATH, self._handle_models)
        return app

    async def _before_cleanup(self) -> None:
        # Releases handlers parked by `hang` so shutdown does not wait on them.
        self._closing.set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting -------------------------------------------------------------------------------

    def script_chat(self, *replies: Scripted[Reply] | str, model: str | None = None) -> None:
        """Queue replies (a `Reply`, plain text, or `fn(request_json) -> Reply`) for `model`."""
        self._chat.push(model, [_as_reply(r) for r in replies])

    def set_chat_responder(
        self, fn: Callable[[dict[str, Any]], Reply | str] | None, *, model: str | None = None
    ) -> None:
        """Answer every chat request for `model` once its queue is empty."""
        self._chat.set_responder(model, None if fn is None else _as_reply(fn))

    def script_speech(self, *replies: Scripted[SpeechReply], model: str | None = None) -> None:
        self._speech.push(model, replies)

    def set_speech_responder(
        self, fn: Callable[[dict[str, Any]], SpeechReply] | None, *, model: str | None = None
    ) -> None:
        self._speech.set_responder(model, fn)

    def script_transcription(self, *replies: Scripted[TranscriptionReply] | str, model: str | None = None) -> None:
        self._transcription.push(model, [TranscriptionReply(text=r) if isinstance(r, str) else r for r in replies])

    def set_transcription_responder(
        self, fn: Callable[[dict[str, Any]], TranscriptionReply] | None, *, model: str | None = None
    ) -> None:
        self._transcription.set_responder(model, fn)

    def pending_chat_replies(self, model: str | None = None) -> int:
        return self._chat.pending(model)

    # -- inspection ------------------------------------------------------------------------------

    def requests_for(self, *, path: str | None = None, model: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if (path is None or r.path == path) and (model is None or r.model == model)]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return self.requests_for(path=CHAT_PATH)

    def chat_count(self, model: str | None = None) -> int:
        return len(self.requests_for(path=CHAT_PATH, model=model))

    def chat_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.chat_requests:
            counts[r.model or ""] = counts.get(r.model or "", 0) + 1
        return counts

    # -- handlers --------------------------------------------------------------------------------

    async def _handle_models(self, request: web.Request) -> web.Response:
        self._record(request, body={}, model=None)
        seen = sorted({r.model for r in self.requests if r.model})
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "double"} for m in seen],
            }
        )

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        body = await _read_json(request)
        if body is None:
            return _error(400, "request body is not JSON", "invalid_request_error")
        model = body.get("model")
        self._record(request, body=body, model=model)
        if not model or not isinstance(body.get("messages"), list):
            return _error(400, "model and messages are required", "invalid_request_error")

        reply = self._chat.take(model, body) or Reply(text=f"You said: {_last_user_text(body['messages'])}")
        if reply.hang:
            await self._closing.wait()
            return _error(503, "server shutting down", "server_error")
        if not await self._sleep(reply.ttft_ms):
            return _error(503, "server shutting down", "server_error")
        if reply.status >= 400:
            return _error(reply.status, reply.error_message, "server_error")

        completion_id = f"chatcmpl-double{next(self._ids)}"
        usage = _usage(body["messages"], reply)
        if not body.get("stream"):
            return web.json_response(
                _completion(completion_id, model, reply, usage),
                headers={"x-request-id": f"req_{completion_id}"},
            )
        return await self._stream_chat(request, body, completion_id, model, reply, usage)

    async def _stream_chat(
        self,
        request: web.Request,
        body: dict[str, Any],
        completion_id: str,
        model: str,
        reply: Reply,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_double",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                out["usage"] = None
            return out

        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": f"req_{completion_id}",
            }
        )
        await resp.prepare(request)

        tokens = _tokens(reply.text)
        cut_at = max(1, len(tokens) // 2) if reply.disconnect_mid_stream else None
        try:
            await _send_sse(resp, chunk({"role": "assistant", "content": "", "refusal": None}))
            for i, token in enumerate(tokens):
                if cut_at is not None and i == cut_at:
                    _drop_connection(request)
                    return resp
                if reply.hang_after_tokens is not None and i == reply.hang_after_tokens:
                    await self._closing.wait()
                    return resp
                if i and not await self._sleep(reply.token_interval_ms):
                    return resp
                await _send_sse(resp, chunk({"content": token}))
            if cut_at is not None:
                _drop_connection(request)
                return resp

            for index, call in enumerate(reply.tool_calls):
                await _send_sse(
                    resp,
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": call.call_id or f"call_{completion_id}_{index}",
                                    "type": "function",
                                    "function": {"name": call.name, "arguments": ""},
                                }
                            ]
                        }
                    ),
                )
                # Arguments arrive in fragments as they do from OpenAI, so parsers must accumulate.
                args = call.arguments_json()
                for start in range(0, len(args), 8):
                    await _send_sse(
                        resp,
                        chunk(
                            {
                                "tool_calls": [
                                    {
                                        "index": index,
                                        "function": {"arguments": args[start : start + 8]},
                                    }
                                ]
                            }
                        ),
                    )

            await _send_sse(resp, chunk({}, _finish_reason(reply)))
            if include_usage:
                await _send_sse(
                    resp,
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": "fp_double",
                        "choices": [],
                        "usage": usage,
                    },
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            # The client gave up (its own timeout or cancellation); nothing left to answer.
            pass
        return resp

    async def _handle_speech(self, request: web.Request) -> web.StreamResponse:
        body = await _read_json(request)
        if body is None:
            return _error(400, "request body is not JSON", "invalid_request_error")
        model = body.get("model")
        self._record(request, body=body, model=model)
        text = body.get("input")
        if not model or not isinstance(text, str) or not text:
            return _error(400, "model and input are required", "invalid_request_error")
        response_format = body.get("response_format", "mp3")
        if response_format not in _AUDIO_FORMATS:
            return _error(400, f"unsupported response_format {response_format!r}", "invalid_request_error")

        reply = self._speech.take(model, body) or SpeechReply()
        if reply.hang:
            await self._closing.wait()
            return _error(503, "server shutting down", "server_error")
        if not await self._sleep(reply.ttfb_ms):
            return _error(503, "server shutting down", "server_error")
        if reply.status >= 400:
            return _error(reply.status, reply.error_message, "server_error")

        duration = reply.duration_s
        if duration is None:
            duration = max(self.min_speech_s, len(text) * self.speech_seconds_per_char)
        audio = encode_audio(tone(duration), response_format)
        chunks = [audio[i : i + self.speech_chunk_bytes] for i in range(0, len(audio), self.speech_chunk_bytes)]
        sse = body.get("stream_format") == "sse"
        request_id = f"req_speech{next(self._ids)}"
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if sse else _AUDIO_FORMATS[response_format][2],
                "x-request-id": request_id,
            }
        )
        await resp.prepare(request)
        try:
            for i, piece in enumerate(chunks):
                if i and not await self._sleep(reply.chunk_interval_ms):
                    return resp
                if sse:
                    event = {
                        "type": "speech.audio.delta",
                        "audio": base64.b64encode(piece).decode(),
                    }
                    await _send_sse(resp, event)
                else:
                    await resp.write(piece)
            if sse:
                input_tokens = len(_tokens(text))
                await _send_sse(
                    resp,
                    {
                        "type": "speech.audio.done",
                        "usage": {
                            "input_tokens": input_tokens,
                            "output_tokens": len(chunks),
                            "total_tokens": input_tokens + len(chunks),
                        },
                    },
                )
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    async def _handle_transcription(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except ValueError:
            return _error(400, "expected multipart/form-data", "invalid_request_error")
        fields: dict[str, Any] = {}
        audio: bytes | None = None
        for key, value in form.items():
            if isinstance(value, web.FileField):
                audio = value.file.read()
            elif key.endswith("[]"):
                fields.setdefault(key[:-2], []).append(value)
            else:
                fields[key] = value
        model = fields.get("model")
        self._record(request, body=fields, model=model, file=audio)
        if not model or not audio:
            return _error(400, "model and file are required", "invalid_request_error")

        reply = self._transcription.take(model, fields) or TranscriptionReply(text=self.default_transcript)
        if reply.hang:
            await self._closing.wait()
            return _error(503, "server shutting down", "server_error")
        if not await self._sleep(reply.latency_ms):
            return _error(503, "server shutting down", "server_error")
        if reply.status >= 400:
            return _error(reply.status, reply.error_message, "server_error")

        headers = {"x-request-id": f"req_transcription{next(self._ids)}"}
        seconds = _wav_seconds(audio)
        response_format = fields.get("response_format", "json")
        if response_format == "text":
            return web.Response(text=reply.text, headers=headers)
        if response_format == "verbose_json":
            return web.json_response(
                {
                    "task": "transcribe",
                    "language": reply.language,
                    "duration": seconds,
                    "text": reply.text,
                    "segments": [],
                },
                headers=headers,
            )
        return web.json_response(
            {
                "text": reply.text,
                "usage": {"type": "duration", "seconds": math.ceil(seconds)},
            },
            headers=headers,
        )

    # -- helpers ---------------------------------------------------------------------------------

    def _record(
        self,
        request: web.Request,
        *,
        body: dict[str, Any],
        model: str | None,
        file: bytes | None = None,
    ) -> None:
        headers = {
            k: (_REDACTED if k.lower() in ("authorization", "api-key") else v) for k, v in request.headers.items()
        }
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                model=model,
                body=body,
                headers=headers,
                file=file,
            )
        )

    async def _sleep(self, ms: float) -> bool:
        """Wait `ms`; False when the server is closing meanwhile."""
        if ms <= 0:
            return not self._closing.is_set()
        try:
            await asyncio.wait_for(self._closing.wait(), ms / 1000)
        except TimeoutError:
            return True
        return False


# -- wire helpers -------------------------------------------------------------------------------

# response_format -> (av container, av codec, Content-Type OpenAI answers with)
_AUDIO_FORMATS: dict[str, tuple[str, str, str]] = {
    "pcm": ("", "", "audio/pcm"),
    "wav": ("", "", "audio/wav"),
    "mp3": ("mp3", "libmp3lame", "audio/mpeg"),
    "opus": ("ogg", "libopus", "audio/opus"),
    "aac": ("adts", "aac", "audio/aac"),
    "flac": ("flac", "flac", "audio/flac"),
}


def tone(duration_s: float, *, sample_rate: int = SPEECH_SAMPLE_RATE, freq: float = 440.0) -> bytes:
    """Mono 16-bit PCM sine: audible as "speech" to energy-based detectors and easy to count."""
    n = round(duration_s * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    return (np.sin(2 * np.pi * freq * t) * 0.3 * 32767).astype("<i2").tobytes()


def encode_audio(pcm: bytes, response_format: str, *, sample_rate: int = SPEECH_SAMPLE_RATE) -> bytes:
    if response_format == "pcm":
        return pcm
    if response_format == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm)
        return buf.getvalue()

    import av  # ships with livekit-agents; only compressed formats need it

    container_fmt, codec, _ = _AUDIO_FORMATS[response_format]
    samples = np.frombuffer(pcm, dtype="<i2")
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_fmt) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        step = 1152
        for start in range(0, len(samples), step):
            frame = av.AudioFrame.from_ndarray(
                samples[start : start + step].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def _as_reply(item: Any) -> Any:
    if isinstance(item, str):
        return Reply(text=item)
    if callable(item) and not isinstance(item, Reply):
        fn = item

        def wrapped(body: dict[str, Any]) -> Reply:
            out = fn(body)
            return Reply(text=out) if isinstance(out, str) else out

        return wrapped
    return item


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


_TOKEN_RE = re.compile(r"\s*\S+|\s+")


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def _finish_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _usage(messages: Sequence[dict[str, Any]], reply: Reply) -> dict[str, Any]:
    prompt = sum(len(_tokens(_content_text(m.get("content")))) + 4 for m in messages)
    completion = len(_tokens(reply.text)) + sum(len(_tokens(c.arguments_json())) + 1 for c in reply.tool_calls)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _completion(completion_id: str, model: str, reply: Reply, usage: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text if reply.text or not reply.tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.call_id or f"call_{completion_id}_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for i, call in enumerate(reply.tool_calls)
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_double",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(reply),
            }
        ],
        "usage": usage,
    }


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}},
        status=status,
        headers={"x-request-id": f"req_error{status}"},
    )


async def _read_json(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def _send_sse(resp: web.StreamResponse, payload: dict[str, Any]) -> None:
    await resp.write(f"data: {json.dumps(payload)}\n\n".encode())


def _drop_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def _wav_seconds(data: bytes) -> float:
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            return w.getnframes() / float(w.getframerate())
    except (wave.Error, EOFError):
        return 0.0
