"""Fixtures of the real-server suite: the test network, a livekit-server per module, the provider doubles,
the real worker process, and callers.

Nothing here is optional on CI: where the namespace, the pinned livekit-server or espeak-ng is missing, a
test fails there (CI=true) and skips elsewhere with the command that fixes it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.doubles.wav_fixtures import espeak_available, synthesize_speech
from tests.e2e.brain import Brain
from tests.e2e.catalog import write_catalog
from tests.e2e.livekit_server import LiveKitServer, installed_version, pinned_version, running_livekit_server
from tests.e2e.network import NETWORK
from tests.e2e.providers import ProviderDoubles
from tests.e2e.worker_process import WorkerEnv, WorkerProcess

SUPPORT_AGENT = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01"
SALES_AGENT = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a02"
FRONT_DESK_TEAM = "3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            # real processes start and calls run in real time: a worker start alone takes 10-30 s on a busy
            # 2-core machine, so the suite-wide 120 s would cut a test that starts two of them
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(300))


def unavailable(reason: str) -> None:
    """A real-server prerequisite is missing: fail on CI (a skipped e2e test there is a failure), skip here."""
    if os.environ.get("CI"):
        pytest.fail(f"real-server suite cannot run on CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def test_network() -> None:
    if not NETWORK.entered:
        unavailable(f"no test network namespace: {NETWORK.problem}")


@pytest.fixture(scope="session")
def livekit_binary() -> None:
    want, have = pinned_version(), installed_version()
    if have != want:
        unavailable(f"livekit-server {want} is not installed (found {have}); run scripts/setup")


@pytest.fixture(scope="module")
def livekit(test_network: None, livekit_binary: None) -> Iterator[LiveKitServer]:
    with running_livekit_server() as server:
        yield server
        assert server.alive(), f"livekit-server died during the module:\n{server.log_text()[-3000:]}"


@pytest.fixture(scope="module")
def brain() -> Brain:
    return Brain()


@pytest.fixture(scope="module")
def doubles(test_network: None, brain: Brain) -> Iterator[ProviderDoubles]:
    providers = ProviderDoubles(webhook_secret=secrets.token_urlsafe(24))
    providers.start()
    providers.call(lambda: providers.openai.set_chat_responder(brain))
    yield providers
    providers.stop()


@pytest.fixture(scope="module")
def world(livekit: LiveKitServer, doubles: ProviderDoubles, tmp_path_factory: pytest.TempPathFactory) -> WorkerEnv:
    base = tmp_path_factory.mktemp("e2e-world")
    return WorkerEnv(
        livekit=livekit,
        catalog=write_catalog(base / "catalog", doubles),
        database_url=f"sqlite:///{base / 'records.db'}",
        webhook_url=doubles.webhook.url,
        webhook_secret=doubles.webhook.secret,
    )


@pytest.fixture(scope="module")
def worker(world: WorkerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = WorkerProcess.started(world, tmp_path_factory.mktemp("worker") / "worker.log")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not espeak_available():
        unavailable("espeak-ng is not installed; run scripts/setup --dev")
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def speak(speech_dir: Path):  # type: ignore[no-untyped-def]  # returns a plain function; typed inside
    def make(text: str) -> np.ndarray:
        return synthesize_speech(text, cache_dir=speech_dir, sample_rate=48_000).pcm

    return make
