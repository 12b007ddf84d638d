"""`voice-worker dev` as a newcomer runs it: nothing configured but the provider keys, so it starts the project's
own `livekit-server --dev` (scripts/setup's build in .tools/bin), the worker and the door, prints one line per
part and the call page's URL; a browser calls an agent through that page with the public dev key; Ctrl-C stops
everything, the LiveKit server it started included, and exits 0.

The catalog is the examples' pointed at the provider doubles (tests/e2e/catalog.py). The server's node IP is
the test network's server host (`--node-ip`), the laptop equivalent being the machine's own first address.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from door.keys import DEV_API_KEY
from tests.e2e import browser
from tests.e2e.catalog import write_catalog
from tests.e2e.conftest import SUPPORT_AGENT, unavailable
from tests.e2e.livekit_server import BINARY
from tests.e2e.network import SERVER_HOST
from tests.e2e.providers import ProviderDoubles
from tests.e2e.session_records import wait_for_record
from tests.ports import free_port
from worker.devserver import DEFAULT_PORT, accepts_connections

QUESTION = "I would like a refund for my order please"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


@dataclass
class Stack:
    process: subprocess.Popen[str]
    lines: list[str]
    database_url: str

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} from voice-worker dev:\n" + "\n".join(self.lines))


def _read(stream: object, lines: list[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]  # a text-mode pipe
        lines.append(line.rstrip())


@pytest.fixture(scope="module")
def stack(
    test_network: None, livekit_binary: None, doubles: ProviderDoubles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    import threading

    if accepts_connections("127.0.0.1", DEFAULT_PORT):
        unavailable(f"something already listens on 127.0.0.1:{DEFAULT_PORT} in the test network")
    base = tmp_path_factory.mktemp("dev-stack")
    database_url = f"sqlite:///{base / 'records.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "DOOR_", "VOICE_WORKER_MODE"))}
    env.update(
        CATALOG_PATH=str(write_catalog(base / "catalog", doubles)),
        DATABASE_URL=database_url,
        OPENAI_API_KEY="sk-e2e-dev-stack",
        DEEPGRAM_API_KEY="dg-e2e-dev-stack",
        HEALTH_HOST="127.0.0.1",
        HEALTH_PORT=str(free_port()),
        LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE="0",
        WORKER_CPU_GUARD="false",
        # the project's own build must be found without PATH's help, as after scripts/setup
        PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != str(BINARY.parent)),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "dev", "--door-port", str(free_port()), "--node-ip", SERVER_HOST],
        env=env,
        cwd=base,  # no developer's .env applies
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=_read, args=(process.stdout, lines), daemon=True)
    reader.start()
    running = Stack(process, lines, database_url)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(5)


def test_dev_brings_up_the_stack_and_a_call_works_from_its_page(
    stack: Stack,
    doubles: ProviderDoubles,
    speak: Callable[[str], np.ndarray],
    tmp_path: Path,
) -> None:
    livekit = stack.wait_line(r"^livekit\s+(ws://\S+)\s+\(livekit-server --dev, pid (\d+)", START_TIMEOUT_S)
    page_url = stack.wait_line(r"^call page\s+(http://\S+/)", START_TIMEOUT_S).group(1)
    stack.wait_line(r"^door\s+http://127\.0\.0\.1:\d+/v1/voice/web-call", 1)
    stack.wait_line(r"^worker\s+registered as 'voice-worker'", 1)
    assert livekit.group(1) == f"ws://localhost:{DEFAULT_PORT}"
    server_pid = int(livekit.group(2))
    config = httpx.get(page_url + "call-page/config", timeout=5).json()
    assert config["mode"] == "dev" and config["api_key"] == DEV_API_KEY  # the public dev key, only in dev mode
    assert not any(a["missing_keys"] for a in config["agents"])
    if reason := browser.problem():
        unavailable(reason)

    name = "Emil" + uuid.uuid4().hex[:6]
    # the dev worker keeps one job process warm (worker/server.py), so the agent joins as fast as in production;
    # the lead is longer all the same, for this shared machine's bad moments
    microphone = browser.fake_microphone(tmp_path / "caller.wav", speak(QUESTION), lead_s=15, tail_s=30)
    doubles.call(lambda: doubles.deepgram.script_transcripts(QUESTION))
    with browser.chromium_page(tmp_path, microphone) as page:
        page.goto(page_url)
        page.wait_for_selector("#setup:not([hidden])", timeout=15_000)
        assert page.is_hidden("#api-key-row")  # dev mode: nothing to type
        page.select_option("#target", f"agent:{SUPPORT_AGENT}")
        page.fill("#var-customer_name", name)
        with page.expect_response(lambda r: r.url.endswith("/v1/voice/web-call")) as minted_response:
            page.click("#start")
        assert minted_response.value.status == 200
        session_id = minted_response.value.json()["session_id"]
        browser.wait_until(page, lambda: browser.peak(page, "agent-level") > 0.02, 30, "the agent's greeting audio")
        browser.wait_until(page, lambda: QUESTION in browser.transcript(page, "caller"), 40, "the caller's question")
        browser.wait_until(
            page, lambda: any("five business days" in t for t in browser.transcript(page, "agent")), 20, "the answer"
        )
        assert page.is_hidden("#error"), page.inner_text("#error")  # a slow agent start leaves no error behind
        page.screenshot(path=str(tmp_path / "dev-stack-call.png"), full_page=True)
        page.click("#hangup")
        browser.wait_until(page, lambda: page.get_attribute("#state", "data-state") == "disconnected", 10, "hang-up")

    record = asyncio.run(wait_for_record(stack.database_url, session_id))
    assert ("user", QUESTION) in [(i.role, i.text) for i in record.transcript]

    # Ctrl-C: the door, the worker (drained: no call is active) and the livekit-server it started all stop
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(STOP_TIMEOUT_S) == 0, "\n".join(stack.lines)
    stack.wait_line(r"^stopped; logs in ", 5)
    assert not _alive(server_pid), "the livekit-server voice-worker dev started is still running"
    assert not accepts_connections("127.0.0.1", DEFAULT_PORT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of a process this test did not start cannot be reaped here; it counts as stopped
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()
