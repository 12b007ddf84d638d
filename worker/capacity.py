"""The load the worker reports to LiveKit, so that the next call goes elsewhere before latency degrades.

    load = max(active calls / WORKER_CALL_CAPACITY, CPU use)        (both 0..1, capped at 1)

WORKER_CALL_CAPACITY is the number of concurrent calls one worker (its main process and its job processes or
threads) serves before turn latency degrades: the density benchmark (benchmarks/density.py) measures it, and
the defaults per JOB_EXECUTOR live in worker/settings.py (DEFAULT_WORKER_CALL_CAPACITY). Counting calls tracks what
a call really costs even when the cost is not CPU (memory, provider connections, the event loop); CPU use still
takes over when calls are heavier than the benchmark's (e.g. a pipeline with a larger turn detector). The CPU
figure is the one livekit uses by default: its cgroup-aware CPU monitor, averaged over 2.5 s.

livekit-agents compares the load with LOAD_THRESHOLD (0.7 by default) before answering each offer and in the
status it sends every 2.5 s: at or above it the worker reports WS_FULL and answers offers "not available", so
LiveKit dispatches to another worker. With the thread executor's default capacity of 20 a worker takes new calls
while it has fewer than 0.7 * 20 = 14; the remaining 30 % is headroom for calls accepted concurrently and for
CPU spikes. An autoscaler should add workers before they report full: `voice_worker_active_calls` per worker
against WORKER_CALL_CAPACITY, or CPU below the threshold (deploy/k8s/worker-hpa.yaml).

In dev mode (`voice-worker dev`) livekit never reports the worker full; the load is still computed and shown.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from worker.settings import Settings


class _HasActiveJobs(Protocol):
    @property
    def active_jobs(self) -> list[object]: ...


def blended_load(active_calls: int, capacity: int, cpu: float) -> float:
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    return min(max(active_calls / capacity, cpu, 0.0), 1.0)


class CpuUse:
    """CPU use of the worker's machine or container (0..1), averaged over the last `window` samples.

    One daemon thread samples it, started on the first reading: livekit calls the load function from a thread
    pool every half second, and a blocking half-second measurement there would slow every reading down."""

    def __init__(self, *, interval_s: float = 0.5, window: int = 5) -> None:
        self._interval_s = interval_s
        self._samples: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        from livekit.agents.utils.hw import get_cpu_monitor

        monitor = get_cpu_monitor()
        while True:
            value = monitor.cpu_percent(interval=self._interval_s)
            with self._lock:
                self._samples.append(value)

    def __call__(self) -> float:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._sample, name="voice_worker_cpu_use", daemon=True)
                self._thread.start()
            return sum(self._samples) / len(self._samples) if self._samples else 0.0


# One sampler per process, whatever the number of servers built in it (tests build many).
_PROCESS_CPU = CpuUse()


class CallLoad:
    """The `load_fnc` of the worker's AgentServer (see the module docstring)."""

    def __init__(self, capacity: int, *, cpu: Callable[[], float] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._cpu = cpu or _PROCESS_CPU

    @classmethod
    def from_settings(cls, settings: Settings) -> CallLoad:
        return cls(settings.call_capacity)

    def __call__(self, server: _HasActiveJobs) -> float:
        return blended_load(len(server.active_jobs), self.capacity, self._cpu())
