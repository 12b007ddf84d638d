"""The worker's capacity model: how many calls it takes, and the load it reports to LiveKit.

    load = max((active + reserved calls) / WORKER_CALL_CAPACITY, CPU use / LOAD_THRESHOLD)    (capped at 1)

The worker is full at load 1: WORKER_CALL_CAPACITY calls, counting the offers it has said yes to and whose job
has not started yet (reserved), or CPU use at LOAD_THRESHOLD, whichever comes first. Below that every offer is
accepted, so a burst of simultaneous offers is taken up to the capacity; at it, offers are refused at once
(terminate=False), so LiveKit offers them to another worker. livekit-agents itself would size a reserved offer
`load_threshold / idle processes` and take 2 of 50 simultaneous offers: worker/livekit_adapter.py makes it use
`CallLoad.effective` instead, and verifies the signed dispatch before any of this (a forged offer never holds a
slot).

WORKER_CALL_CAPACITY is the number of concurrent calls one worker (its main process and its job processes or
threads) serves before turn latency degrades: the density benchmark (benchmarks/density.py) measures it, and
the defaults per JOB_EXECUTOR live in worker/settings.py (DEFAULT_WORKER_CALL_CAPACITY). Counting calls tracks what
a call really costs even when the cost is not CPU (memory, provider connections, the event loop); the CPU guard
takes over when calls are heavier than the benchmark's (e.g. a pipeline with a larger turn detector) or the
machine is shared. The CPU figure is the one livekit uses by default: its cgroup-aware CPU monitor, averaged
over 2.5 s, so it lags a burst: the call count is what bounds a burst.

The load is sent to LiveKit every 2.5 s (status WS_FULL at 1). An autoscaler should add workers before they
report full: `voice_worker_active_calls` per worker against WORKER_CALL_CAPACITY, or CPU below LOAD_THRESHOLD
(deploy/k8s/worker-hpa.yaml).

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


def blended_load(calls: int, capacity: int, cpu: float, cpu_guard: float = 1.0) -> float:
    """The load for `calls` calls (active plus reserved) and a CPU use; 1 means full."""
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    if not 0 < cpu_guard <= 1:
        raise ValueError("cpu_guard must be in (0, 1]")
    return min(max(calls / capacity, cpu / cpu_guard, 0.0), 1.0)


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


def _no_cpu() -> float:
    return 0.0


# One sampler per process, whatever the number of servers built in it (tests build many).
_PROCESS_CPU = CpuUse()


class CallLoad:
    """The `load_fnc` of the worker's AgentServer, and the capacity decision (see the module docstring)."""

    # The load at which the worker is full: the AgentServer's load_threshold (worker/server.py).
    FULL = 1.0

    def __init__(self, capacity: int, *, cpu_guard: float = 1.0, cpu: Callable[[], float] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 0 < cpu_guard <= 1:
            raise ValueError("cpu_guard must be in (0, 1]")
        self.capacity = capacity
        self.cpu_guard = cpu_guard
        self._cpu = cpu or _PROCESS_CPU

    @classmethod
    def from_settings(cls, settings: Settings) -> CallLoad:
        if not settings.worker_cpu_guard:
            # the machine's CPU is not this worker's (tests, a shared laptop): the call count alone decides
            return cls(settings.call_capacity, cpu_guard=settings.load_threshold, cpu=_no_cpu)
        return cls(settings.call_capacity, cpu_guard=settings.load_threshold)

    def __call__(self, server: _HasActiveJobs) -> float:
        """What livekit reports to LiveKit (it calls this from a thread pool, so it reads active jobs only)."""
        return self.effective(active=len(server.active_jobs), reserved=0)

    def effective(self, *, active: int, reserved: int) -> float:
        """The load including offers accepted whose job has not started; reading it never blocks (the CPU
        figure is the sampler's last average), so livekit can ask it on the event loop for every offer."""
        return blended_load(active + reserved, self.capacity, self._cpu(), self.cpu_guard)

    def has_room(self, *, active: int, reserved: int) -> bool:
        return self.effective(active=active, reserved=reserved) < self.FULL
