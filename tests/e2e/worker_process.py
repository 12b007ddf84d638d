"""The real `voice-worker start` process, as an operator runs it: production mode, real (generated) secrets,
the catalog pointed at the provider doubles, a SQLite session store and a webhook receiver.

`WorkerProcess.env` is what the door and `voice-worker web-call` need too (same LiveKit keys, signing secret,
catalog and store), so tokens minted by them are the ones this worker accepts.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.livekit_server import LiveKitServer
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
VOICE_WORKER = Path(sys.executable).with_name("voice-worker")
READY_TIMEOUT_S = 60.0


def terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (a worker drains, the door finishes its requests), SIGKILL after `timeout`; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class WorkerEnv:
    """Settings shared by every process of one test world (workers, door, CLI)."""

    livekit: LiveKitServer
    catalog: Path
    database_url: str
    webhook_url: str
    webhook_secret: str
    signing_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    agent_name: str = field(default_factory=lambda: "voice-worker-e2e-" + secrets.token_hex(3))

    def as_environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "PROMETHEUS_"))}
        env.update(
            VOICE_WORKER_MODE="production",
            AGENT_NAME=self.agent_name,
            LIVEKIT_URL=self.livekit.url,
            LIVEKIT_API_KEY=self.livekit.api_key,
            LIVEKIT_API_SECRET=self.livekit.api_secret,
            DISPATCH_SIGNING_SECRET=self.signing_secret,
            CATALOG_PATH=str(self.catalog),
            DATABASE_URL=self.database_url,
            POSTCALL_WEBHOOK_URL=self.webhook_url,
            POSTCALL_WEBHOOK_SECRET=self.webhook_secret,
            OPENAI_API_KEY="sk-e2e-" + secrets.token_hex(8),
            DEEPGRAM_API_KEY="dg-e2e-" + secrets.token_hex(8),
            HEALTH_HOST="127.0.0.1",
            PROMETHEUS_PORT="0",
            # the example pipelines use VAD turn detection: livekit need not load its turn-detector model
            LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE="0",
            # livekit-server, the callers and pytest share these cores: only the call count may mark the worker full
            WORKER_CPU_GUARD="false",
        )
        env.update(extra)
        return env

    def web_call(self, *args: str, **extra_env: str) -> dict[str, Any]:
        """`voice-worker web-call ARGS`: what the door would answer, minted by the CLI."""
        out = subprocess.run(
            [str(VOICE_WORKER), "web-call", *args],
            env=self.as_environ(**extra_env),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        if out.returncode != 0:
            raise RuntimeError(f"voice-worker web-call {' '.join(args)} exited {out.returncode}: {out.stderr}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result


class WorkerProcess:
    def __init__(self, env: WorkerEnv, log_path: Path, **extra_env: str) -> None:
        self.health_port = free_port()
        self.log_path = log_path
        self._env = env.as_environ(HEALTH_PORT=str(self.health_port), **extra_env)
        self._log = open(log_path, "ab")  # noqa: SIM115 -- closed in stop(); the file outlives the process
        self.process = subprocess.Popen(
            [str(VOICE_WORKER), "start"],
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )

    @classmethod
    def started(cls, env: WorkerEnv, log_path: Path, **extra_env: str) -> WorkerProcess:
        """A worker registered with LiveKit and reporting itself available; stopped again if it never gets there."""
        worker = cls(env, log_path, **extra_env)
        try:
            worker.wait_ready()
            worker.wait_available()
        except BaseException:
            worker.stop()
            raise
        return worker

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds until `GET /ready` answered 200 (registered with LiveKit); raises with the log tail if not."""
        start = time.monotonic()
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"worker not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)
        return time.monotonic() - start

    def available(self) -> bool:
        """Whether the worker's last load report to LiveKit said it takes calls. Its CPU guard reads the whole
        machine's CPU, which here includes livekit-server, the callers and pytest (in production it is the
        worker's own container), so a warm-up spike can mark it full for a few seconds after registering."""
        status = [r["message"] for r in self.log_records() if str(r.get("message", "")).startswith("worker is ")]
        return not status or "below capacity" in status[-1]

    def wait_available(self, timeout: float = 45.0, stable_s: float = 3.0) -> None:
        """Until the worker has said it takes calls for `stable_s` in a row: longer than livekit's 2.5 s status
        interval, so the first load report after registering (the one a warm-up spike makes full) is seen."""
        deadline = time.monotonic() + timeout
        since: float | None = None
        while True:
            now = time.monotonic()
            since = (since or now) if self.available() else None
            if since is not None and now - since >= stable_s:
                return
            if now > deadline:
                raise RuntimeError(f"worker still reports itself full after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def log_records(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines (production mode); other lines (a crash's stderr) are skipped."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        code = terminate(self.process, timeout)
        self._log.close()
        return code


class DoorProcess:
    """`voice-worker door` in production mode with one generated API key (scoped to everything)."""

    def __init__(self, env: WorkerEnv, workdir: Path, **extra_env: str) -> None:
        from door.keys import generate_api_key, hash_api_key

        self.api_key = generate_api_key()
        keys_file = workdir / "door-keys.yaml"
        keys_file.write_text(
            f'- name: e2e\n  sha256: {hash_api_key(self.api_key)}\n  scopes: {{agents: ["*"], teams: ["*"]}}\n'
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "door.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            [str(VOICE_WORKER), "door"],
            env=env.as_environ(
                DOOR_API_KEYS_FILE=str(keys_file), DOOR_HOST="127.0.0.1", DOOR_PORT=str(self.port), **extra_env
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"door did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def web_call(self, body: dict[str, Any]) -> httpx.Response:
        """Feather's `POST /v1/voice/web-call`, as the platform's browser client calls it."""
        return httpx.post(f"{self.url}/v1/voice/web-call", json=body, headers={"x-api-key": self.api_key}, timeout=10)

    def stop(self) -> None:
        terminate(self.process, 15)
        self._log.close()
