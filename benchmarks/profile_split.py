"""Where a worker's CPU goes while it holds calls on the real media path (docs/performance.md).

Two views of one window of a running agent process, taken from outside it:
- per thread, from /proc/<pid>/task/*/stat: the Python threads (event loop, executor threads) against the native
  threads of livekit's FFI (Rust: WebRTC, Opus, resampling, the audio streams) and of livekit's local inference
  (Silero VAD), which no Python profiler sees;
- inside the Python threads, `py-spy record --gil` (a sampling profiler that reads the process's memory: no code
  change, no pause with `--nonblocking`; `--gil` keeps only the thread holding the GIL, so a sample is Python
  doing work, not a thread waiting in `select`) as collapsed stacks, each sample put in one bucket by the first rule of
  `BUCKETS` that matches a frame of its stack (outermost rule first: the synchronizer's STFT is the
  synchronizer's, not numpy's).
py-spy runs on the cores the benchmark keeps for livekit-server and the callers, so it does not take the
worker's core; what it costs the worker (reading its memory) shows as a little system time of the worker.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")

# (bucket, frame substrings): the first bucket with a substring in any frame of a sample's stack takes it
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("transcription synchronizer (speaking-rate STFT, word timing)", ("voice/transcription/",)),
    ("VAD (Silero stream: frames in, inference, events)", ("inference/vad", "local_inference", "plugins/silero")),
    (
        "metrics, logging, telemetry",
        (
            "logging/__init__",
            "/logging/",
            "prometheus_client",
            "agents/metrics",
            "telemetry",
            "opentelemetry",
            "worker/metrics",
            "logcontext",
            "json_log",
            "pythonjsonlogger",
        ),
    ),
    (
        "room audio in/out (FFI, audio frames, resampling, track streams)",
        ("livekit/rtc/", "voice/room_io/", "utils/audio", "voice/io.py", "agents/utils/aio"),
    ),
    (
        "provider clients (STT/TTS websockets, LLM HTTP stream)",
        ("plugins/deepgram", "plugins/openai", "aiohttp/", "httpx", "httpcore", "openai/", "websockets"),
    ),
    (
        "agent session (turn taking, generation, STT/TTS/LLM nodes)",
        (
            "voice/agent_activity",
            "voice/agent_session",
            "voice/generation",
            "voice/audio_recognition",
            "voice/agent.py",
            "voice/turn",
            "agents/stt/",
            "agents/tts/",
            "agents/llm/",
            "agents/tokenize",
        ),
    ),
    ("this project's code (call, procedures, records)", ("/procedures/", "/worker/", "/records/", "/pipelines/")),
    ("asyncio event loop (scheduling, selectors, tasks)", ("asyncio/", "selectors.py")),
)
OTHER = "other"


@dataclass
class ThreadCPU:
    """CPU seconds per thread name (numbers stripped: 'tokio-runtime-w' threads are one group)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def of(root: int) -> ThreadCPU:
        """Every thread of `root` and of the processes it started (livekit's inference process, job processes)."""
        import psutil  # type: ignore[import-untyped]  # no stubs (see benchmarks/real_server.py)

        try:
            pids = [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
        except psutil.Error:
            return ThreadCPU()
        out: dict[str, float] = {}
        for pid in pids:
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        raw = f.read()
                except OSError:
                    continue
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw.rsplit(")", 1)[1].split()
                # per-thread keys: a thread that ends inside the window drops out of both ends' difference
                where = "" if pid == root else "child process: "
                out[f"{pid}:{tid}:{where}{name}"] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return ThreadCPU(out)

    def minus(self, earlier: ThreadCPU) -> dict[str, float]:
        """Seconds per thread group between `earlier` and this sample (threads alive at both)."""
        groups: Counter[str] = Counter()
        for key, value in self.seconds.items():
            if key in earlier.seconds:
                name = re.sub(r"[-_ ]?\d+$", "", key.split(":", 2)[2]) or "?"
                groups[name] += value - earlier.seconds[key]
        return dict(groups)


def thread_kind(name: str, main_name: str) -> str:
    """Which runtime a thread group belongs to, by its name (Python 3.11 does not name its threads for the OS:
    they carry the process's name)."""
    if name.startswith("child process: "):
        return "child processes"
    if name == main_name[:15] or name.startswith(("python", "ThreadPoolExec", "asyncio", "job_thread", "Thread")):
        return "python"
    if name.startswith(("tokio", "livekit", "ffi", "webrtc", "signaling", "worker_thread", "network_thread")):
        return "livekit FFI (Rust/WebRTC)"
    if "inference" in name.lower() or name.startswith(("vad", "ort", "onnx")):
        return "local inference"
    return "other native"


def classify(collapsed: str) -> dict[str, Any]:
    """py-spy's raw output ("frame;frame;... count" per line) -> samples per bucket, and the top leaf frames."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        bucket = next((name for name, needles in BUCKETS if any(n in f for f in frames for n in needles)), OTHER)
        buckets[bucket] += count
        leaves[_short(frames[-1])] += count
    return {
        "samples": total,
        "buckets": {name: count / total for name, count in buckets.most_common()} if total else {},
        "top_leaves": [{"frame": f, "share": c / total} for f, c in leaves.most_common(15)] if total else [],
    }


def _short(frame: str) -> str:
    """'fn (path/to/site-packages/pkg/mod.py:12)' -> 'fn (pkg/mod.py)'."""
    for prefix in ("site-packages/", "lib/python3.11/"):
        if prefix in frame:
            head, _, tail = frame.partition("(")
            return head + "(" + tail.split(prefix, 1)[1].split(":", 1)[0] + ")"
    return frame.split(":", 1)[0] + (")" if "(" in frame else "")


def py_spy() -> Path:
    import sys

    return Path(sys.executable).with_name("py-spy")


def profile_window(pid: int, duration_s: float, out: Path, rate: int = 100) -> dict[str, Any]:
    """`py-spy record` of `pid` for `duration_s` plus the per-thread CPU over the same window."""
    main_name = _comm(pid)
    before, started = ThreadCPU.of(pid), time.monotonic()
    command = [
        str(py_spy()), "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(round(duration_s)),
        "--nonblocking", "--gil", "--format", "raw", "--output", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    threads = ThreadCPU.of(pid).minus(before)
    kinds: Counter[str] = Counter()
    for name, seconds in threads.items():
        kinds[thread_kind(name, main_name)] += seconds
    split = classify(out.read_text()) if out.exists() else {"error": result.stderr[-500:]}
    busiest = sorted(threads.items(), key=lambda kv: -kv[1])
    return {
        "command": " ".join(command),
        "window_s": round(elapsed, 2),
        "cpu_percent_by_runtime": {k: round(100 * v / elapsed, 1) for k, v in kinds.most_common()},
        "cpu_percent_by_thread": {k: round(100 * v / elapsed, 1) for k, v in busiest if v > 0},
        "python": split,
    }


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "python"
