"""A local server that speaks Deepgram's listen (STT) and speak (TTS) protocols.

Streaming STT decides "speech" by audio energy, on audio time rather than wall time, so a test that
streams tone-then-silence frames gets SpeechStarted, an interim, and a final Results message with
`speech_final` at the same point on every run. What each utterance "said" is scripted.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import re
import uuid
import wave
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.doubles.loopback_server import LoopbackServer
from tests.doubles.openai_server import tone

LISTEN_PATH = "/v1/listen"
SPEAK_PATH = "/v1/speak"
_REDACTED = "<redacted>"


@dataclass(frozen=True)
class Utterance:
    text: str
    confidence: float = 0.98


@dataclass(frozen=True)
class DeepgramRequest:
    kind: str  # "listen_ws" | "listen_http" | "speak_ws" | "speak_http"
    path: str
    query: dict[str, str]
    # The Authorization value ("Token <key>") is replaced so recorded requests never hold a key.
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class ListenSession:
    """What one streaming-STT websocket received and sent."""

    query: dict[str, str]
    audio_bytes: int = 0
    control_messages: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finals(self) -> list[str]:
        return [
            m["channel"]["alternatives"][0]["transcript"]
            for m in self.sent
            if m["type"] == "Results" and m["is_final"] and m["channel"]["alternatives"][0]["transcript"]
        ]


class DeepgramServerDouble(LoopbackServer):
    """`async with DeepgramServerDouble() as dg:`, then `deepgram.STT(base_url=dg.listen_url)`."""

    def __init__(
        self,
        *,
        default_transcript: str = "hello",
        voice_rms_threshold: float = 500.0,
        interim_after_ms: int = 200,
        tts_seconds_per_char: float = 0.06,
        tts_min_seconds: float = 0.2,
        tts_ttfb_ms: float = 0.0,
    ) -> None:
        super().__init__()
        self.default_transcript = default_transcript
        self.voice_rms_threshold = voice_rms_threshold
        self.interim_after_ms = interim_after_ms
        self.tts_seconds_per_char = tts_seconds_per_char
        self.tts_min_seconds = tts_min_seconds
        self.tts_ttfb_ms = tts_ttfb_ms
        self.requests: list[DeepgramRequest] = []
        self.listen_sessions: list[ListenSession] = []
        # Text of each synthesis: one per HTTP request, one per websocket Flush.
        self.spoken_texts: list[str] = []
        self._utterances: deque[Utterance] = deque()
        self._rejections: dict[str, deque[int]] = {LISTEN_PATH: deque(), SPEAK_PATH: deque()}
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", LISTEN_PATH, self._handle_listen)
        app.router.add_route("*", SPEAK_PATH, self._handle_speak)
        return app

    async def _before_cleanup(self) -> None:
        self._closing.set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def listen_url(self) -> str:
        return self.base_url + LISTEN_PATH

    @property
    def speak_url(self) -> str:
        return self.base_url + SPEAK_PATH

    # -- scripting -------------------------------------------------------------------------------

    def script_transcripts(self, *utterances: Utterance | str) -> None:
        """Queue what the next utterances "said", across streaming and prerecorded requests."""
        self._utterances.extend(Utterance(u) if isinstance(u, str) else u for u in utterances)

    def reject_next(self, path: str, status: int, count: int = 1) -> None:
        """Answer the next `count` requests on `path` (websocket upgrades too) with `status`."""
        self._rejections[path].extend([status] * count)

    def requests_for(self, kind: str) -> list[DeepgramRequest]:
        return [r for r in self.requests if r.kind == kind]

    # -- listen ----------------------------------------------------------------------------------

    async def _handle_listen(self, request: web.Request) -> web.StreamResponse:
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        body = b"" if is_ws else await request.read()
        self._record(request, "listen_ws" if is_ws else "listen_http", body)
        if rejected := self._take_rejection(LISTEN_PATH):
            return rejected
        if not is_ws:
            return self._prerecorded(request, body)

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = ListenSession(query=dict(request.query))
        self.listen_sessions.append(session)
        await _ListenConnection(self, ws, session).run()
        return ws

    def _prerecorded(self, request: web.Request, body: bytes) -> web.Response:
        request_id = str(uuid.uuid4())
        try:
            with wave.open(io.BytesIO(body), "rb") as w:
                duration = w.getnframes() / float(w.getframerate())
        except (wave.Error, EOFError):
            return _dg_error(400, "Bad Request: failed to process audio: corrupt or unsupported data", request_id)
        utt = self.next_utterance()
        alternative = {
            "transcript": utt.text,
            "confidence": utt.confidence,
            "words": _words(utt, 0.0, duration),
        }
        return web.json_response(
            {
                "metadata": {
                    "transaction_key": "deprecated",
                    "request_id": request_id,
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "duration": duration,
                    "channels": 1,
                    "models": [request.query.get("model", "nova-3")],
                },
                "results": {"channels": [{"alternatives": [alternative]}]},
            },
            headers={"dg-request-id": request_id},
        )

    def next_utterance(self) -> Utterance:
        return self._utterances.popleft() if self._utterances else Utterance(self.default_transcript)

    def peek_utterance(self) -> Utterance:
        return self._utterances[0] if self._utterances else Utterance(self.default_transcript)

    # -- speak -----------------------------------------------------------------------------------

    async def _handle_speak(self, request: web.Request) -> web.StreamResponse:
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        body = b"" if is_ws else await request.read()
        self._record(request, "speak_ws" if is_ws else "speak_http", body)
        if rejected := self._take_rejection(SPEAK_PATH):
            return rejected
        request_id = str(uuid.uuid4())
        encoding = request.query.get("encoding", "linear16")
        if encoding != "linear16":
            # The double only renders raw 16-bit PCM, which is what the plugin asks for by default.
            return _dg_error(400, f"unsupported encoding {encoding!r} in this double", request_id)
        sample_rate = int(request.query.get("sample_rate", "24000"))
        if is_ws:
            return await self._speak_ws(request, request_id, sample_rate)

        try:
            text = json.loads(body)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return _dg_error(400, "Bad Request: body must be JSON with a text field", request_id)
        self.spoken_texts.append(text)
        if not await self._sleep(self.tts_ttfb_ms):
            return _dg_error(503, "server shutting down", request_id)
        resp = web.StreamResponse(headers={"Content-Type": "audio/l16", "dg-request-id": request_id})
        await resp.prepare(request)
        try:
            for chunk in _chunks(self._render(text, sample_rate), sample_rate // 10 * 2):
                await resp.write(chunk)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    async def _speak_ws(self, request: web.Request, request_id: str, sample_rate: int) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        model = request.query.get("model", "aura-2-andromeda-en")
        await ws.send_json(
            {
                "type": "Metadata",
                "request_id": request_id,
                "model_name": model,
                "model_version": "double",
                "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, model)),
            }
        )
        pending = ""
        sequence = itertools.count(0)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "Speak":
                pending += data.get("text", "")
            elif kind == "Flush":
                text, pending = pending, ""
                if text.strip():
                    self.spoken_texts.append(text.strip())
                    if not await self._sleep(self.tts_ttfb_ms):
                        break
                    for chunk in _chunks(self._render(text.strip(), sample_rate), sample_rate // 10 * 2):
                        await ws.send_bytes(chunk)
                await ws.send_json({"type": "Flushed", "sequence_id": next(sequence)})
            elif kind == "Clear":
                pending = ""
                await ws.send_json({"type": "Cleared", "sequence_id": next(sequence)})
            elif kind == "Close":
                break
            else:
                await ws.send_json({"type": "Warning", "warn_code": "UNKNOWN_MESSAGE_TYPE", "warn_msg": kind})
        await ws.close()
        return ws

    def _render(self, text: str, sample_rate: int) -> bytes:
        duration = max(self.tts_min_seconds, len(text) * self.tts_seconds_per_char)
        return tone(duration, sample_rate=sample_rate)

    # -- helpers ---------------------------------------------------------------------------------

    def _record(self, request: web.Request, kind: str, body: bytes) -> None:
        headers = {k: (_REDACTED if k.lower() == "authorization" else v) for k, v in request.headers.items()}
        self.requests.append(
            DeepgramRequest(kind=kind, path=request.path, query=dict(request.query), headers=headers, body=body)
        )

    def _take_rejection(self, path: str) -> web.Response | None:
        queue = self._rejections[path]
        if not queue:
            return None
        return _dg_error(queue.popleft(), "scripted failure", str(uuid.uuid4()))

    async def _sleep(self, ms: float) -> bool:
        if ms <= 0:
            return not self._closing.is_set()
        try:
            await asyncio.wait_for(self._closing.wait(), ms / 1000)
        except TimeoutError:
            return True
        return False


class _ListenConnection:
    """One streaming-STT websocket: segments incoming linear16 audio by energy in 10 ms windows."""

    def __init__(self, server: DeepgramServerDouble, ws: web.WebSocketResponse, session: ListenSession) -> None:
        q = session.query
        self._server = server
        self._ws = ws
        self._session = session
        self._request_id = str(uuid.uuid4())
        self._model = q.get("model", "nova-3")
        self._sample_rate = int(q.get("sample_rate", "16000"))
        self._channels = int(q.get("channels", "1"))
        # Deepgram's own default endpointing is 10 ms; "false" turns it off.
        endpointing = q.get("endpointing", "10")
        self._endpointing_ms = None if endpointing == "false" else int(endpointing)
        self._interim = q.get("interim_results", "false") == "true"
        self._vad_events = q.get("vad_events", "false") == "true"
        self._utterance_end_ms = int(q["utterance_end_ms"]) if "utterance_end_ms" in q else None
        self._window_bytes = self._sample_rate // 100 * 2 * self._channels
        self._buffer = b""
        self._t = 0.0  # seconds of audio processed
        self._in_speech = False
        self._speech_start = 0.0
        self._last_voice_end = 0.0
        self._silence_ms = 0
        self._voiced_ms = 0
        self._interim_sent = False
        self._awaiting_utterance_end = False

    async def run(self) -> None:
        async for msg in self._ws:
            if msg.type == WSMsgType.BINARY:
                self._session.audio_bytes += len(msg.data)
                await self._feed(msg.data)
            elif msg.type == WSMsgType.TEXT:
                kind = json.loads(msg.data).get("type", "")
                self._session.control_messages.append(kind)
                if kind == "Finalize":
                    await self._finalize(speech_final=False, from_finalize=True)
                elif kind == "CloseStream":
                    if self._in_speech:
                        await self._finalize(speech_final=True)
                    await self._send(
                        {
                            "type": "Metadata",
                            "transaction_key": "deprecated",
                            "request_id": self._request_id,
                            "sha256": "",
                            "created": "1970-01-01T00:00:00.000Z",
                            "duration": self._t,
                            "channels": self._channels,
                            "models": [self._model],
                            "model_info": {},
                        }
                    )
                    break
        await self._ws.close()

    async def _feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self._window_bytes:
            window, self._buffer = (
                self._buffer[: self._window_bytes],
                self._buffer[self._window_bytes :],
            )
            samples = np.frombuffer(window, dtype="<i2").astype(np.float64)
            voiced = float(np.sqrt(np.mean(samples**2))) >= self._server.voice_rms_threshold
            start, self._t = self._t, self._t + 0.01
            if voiced:
                await self._on_voice(start)
            else:
                await self._on_silence()

    async def _on_voice(self, start: float) -> None:
        if not self._in_speech:
            self._in_speech = True
            self._speech_start = start
            self._voiced_ms = 0
            self._interim_sent = False
            self._awaiting_utterance_end = False
            if self._vad_events:
                await self._send({"type": "SpeechStarted", "channel": [0], "timestamp": round(start, 3)})
        self._silence_ms = 0
        self._voiced_ms += 10
        self._last_voice_end = self._t
        if self._interim and not self._interim_sent and self._voiced_ms >= self._server.interim_after_ms:
            self._interim_sent = True
            utt = self._server.peek_utterance()
            words = utt.text.split()
            partial = Utterance(" ".join(words[: max(1, len(words) // 2)]), utt.confidence)
            await self._send(self._results(partial, is_final=False, speech_final=False))

    async def _on_silence(self) -> None:
        if self._in_speech:
            self._silence_ms += 10
            if self._endpointing_ms is not None and self._silence_ms >= self._endpointing_ms:
                await self._finalize(speech_final=True)
                self._awaiting_utterance_end = self._utterance_end_ms is not None
            elif self._utterance_end_ms is not None and self._silence_ms >= self._utterance_end_ms:
                await self._finalize(speech_final=False)
                await self._send_utterance_end()
        elif self._awaiting_utterance_end and self._utterance_end_ms is not None:
            if (self._t - self._last_voice_end) * 1000 >= self._utterance_end_ms - 1e-6:
                await self._send_utterance_end()

    async def _finalize(self, *, speech_final: bool, from_finalize: bool = False) -> None:
        if not self._in_speech:
            if from_finalize:
                # Deepgram answers a Finalize with nothing pending by an empty final result.
                await self._send(
                    self._results(Utterance("", 0.0), is_final=True, speech_final=False, from_finalize=True)
                )
            return
        self._in_speech = False
        utt = self._server.next_utterance()
        await self._send(self._results(utt, is_final=True, speech_final=speech_final, from_finalize=from_finalize))

    async def _send_utterance_end(self) -> None:
        self._awaiting_utterance_end = False
        await self._send(
            {
                "type": "UtteranceEnd",
                "channel": [0, 1],
                "last_word_end": round(self._last_voice_end, 3),
            }
        )

    def _results(
        self, utt: Utterance, *, is_final: bool, speech_final: bool, from_finalize: bool = False
    ) -> dict[str, Any]:
        end = self._last_voice_end if utt.text else self._t
        start = self._speech_start if utt.text else self._t
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(end - start, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": utt.text,
                        "confidence": utt.confidence,
                        "words": _words(utt, start, end),
                    }
                ]
            },
            "metadata": {
                "request_id": self._request_id,
                "model_info": {"name": self._model, "version": "double", "arch": self._model},
                "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, self._model)),
            },
        }

    async def _send(self, payload: dict[str, Any]) -> None:
        self._session.sent.append(payload)
        if not self._ws.closed:
            await self._ws.send_json(payload)


_PUNCT_RE = re.compile(r"[^\w'-]+")


def _words(utt: Utterance, start: float, end: float) -> list[dict[str, Any]]:
    tokens = utt.text.split()
    if not tokens:
        return []
    step = (end - start) / len(tokens)
    return [
        {
            "word": _PUNCT_RE.sub("", token).lower(),
            "start": round(start + i * step, 3),
            "end": round(start + (i + 1) * step, 3),
            "confidence": utt.confidence,
            "punctuated_word": token,
        }
        for i, token in enumerate(tokens)
    ]


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _dg_error(status: int, message: str, request_id: str) -> web.Response:
    return web.json_response(
        {
            "err_code": "REQUEST_FAILED" if status >= 500 else "BAD_REQUEST",
            "err_msg": message,
            "request_id": request_id,
        },
        status=status,
        headers={"dg-request-id": request_id},
    )
