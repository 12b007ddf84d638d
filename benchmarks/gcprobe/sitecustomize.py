"""The garbage collector's share of a benchmarked process (benchmarks/profile_split.py): with this directory on
PYTHONPATH and GC_PROBE_PATH set, the process times every collection (`gc.callbacks`) and writes the running
totals there once a second. Without GC_PROBE_PATH it does nothing. A sampling profiler cannot see collections: they
run inside whatever allocation triggered them."""

import os

_path = os.environ.get("GC_PROBE_PATH")
if _path:
    import gc
    import json
    import threading
    import time

    _totals = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}
    _started: list[float] = []

    def _time_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started.append(time.perf_counter())
        elif _started:
            generation = info.get("generation", 0)
            _totals["collections"][generation] += 1
            _totals["seconds"][generation] += time.perf_counter() - _started.pop()

    def _write() -> None:
        while True:
            time.sleep(1.0)
            tmp = f"{_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "at": time.monotonic(), **_totals}, f)
            os.replace(tmp, f"{_path}.{os.getpid()}")

    gc.callbacks.append(_time_collection)
    threading.Thread(target=_write, name="gc-probe", daemon=True).start()
