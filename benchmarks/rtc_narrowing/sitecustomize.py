"""What livekit 1.2.1's narrower media subscriptions would save this worker, measured before livekit-agents allows
that release (1.8.9 pins livekit==1.1.21): with this directory on PYTHONPATH and NARROW_AUDIO_STREAMS=1, every
`rtc.AudioStream` of the process receives its own stream's events only, as 1.2.1's `AudioStream` subscribes.

In 1.1.21 each AudioStream subscribes to every `audio_stream_event` of the process and drops the other streams'
ones on its own loop: with the thread executor, N calls in one process mean N loop wake-ups per received frame.
Benchmark-only (`python -m benchmarks.real_server --profile`): the shipped worker does not patch livekit-rtc.
Chains to benchmarks/gcprobe (one sitecustomize per process is imported)."""

import os
import runpy
from pathlib import Path

if os.environ.get("NARROW_AUDIO_STREAMS") == "1":
    import functools
    from typing import Any

    from livekit import rtc
    from livekit.rtc._ffi_client import FfiClient

    _original_init = rtc.AudioStream.__init__

    def _own_stream(handle: int, event: Any) -> bool:
        return bool(
            event.WhichOneof("message") == "audio_stream_event" and event.audio_stream_event.stream_handle == handle
        )

    @functools.wraps(_original_init)
    def _narrowed_init(self: rtc.AudioStream, *args: Any, **kwargs: Any) -> None:
        _original_init(self, *args, **kwargs)
        handle = self._ffi_handle.handle
        ffi_queue = FfiClient.instance.queue
        with ffi_queue._lock:
            for i, (queue, loop, _) in enumerate(ffi_queue._subscribers):
                if queue is self._ffi_queue:
                    ffi_queue._subscribers[i] = (queue, loop, functools.partial(_own_stream, handle))

    rtc.AudioStream.__init__ = _narrowed_init  # type: ignore[method-assign]  # the experiment is this patch

_gcprobe = Path(__file__).resolve().parent.parent / "gcprobe" / "sitecustomize.py"
runpy.run_path(str(_gcprobe), run_name="gcprobe")
