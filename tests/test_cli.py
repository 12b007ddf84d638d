"""The `voice-worker` command line: check, web-call, inspect-dispatch, console, and an unreachable LiveKit."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from calls.call import CallServices
from catalog.loader import CatalogStore
from cli import main as cli
from cli.console import run_console
from contract.settings import EXAMPLE_CATALOG
from tests.doubles.fake_llm import FakeLLM, Reply
from tests.ports import free_port
from worker.settings import Settings

SUPPORT = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01"
TEAM = "3a9f8e7d-6c5b-4a4f-9e3d-2c1b0a9f8e01"
KEYS = {"OPENAI_API_KEY": "sk-test-not-real", "DEEPGRAM_API_KEY": "dg-test-not-real"}


@pytest.fixture(autouse=True)
def dev_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/records.db")
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CATALOG_PATH", raising=False)


def run(
    argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str | None = None, monkeypatch=None
) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_ok_prints_one_summary_line(capsys):
    code, out, _ = run(["check"], capsys)
    assert code == 0
    assert out.strip().splitlines() == [
        f"catalog OK: {EXAMPLE_CATALOG}: 2 agents (2 enabled), 1 teams, 6 procedures on active revisions, 1 tools"
    ]


def test_check_reports_file_field_reason(tmp_path: Path, capsys, monkeypatch):
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target)
    sales = target / "sales.yaml"
    # The first deepgram entry (STT) becomes unknown; the second (TTS) stays and lacks its key.
    text = sales.read_text().replace("provider: deepgram", "provider: telepathy", 1)
    text = text.replace("{% if company %}The caller works at {{ company }}.{% endif %}", "Ask about {{ budget }}.")
    sales.write_text(text)
    support = target / "support.yaml"
    support.write_text(support.read_text().replace("confidence: 0.6", "confidence: 1.5"))
    monkeypatch.delenv("DEEPGRAM_API_KEY")
    code, out, _ = run(["check", "--catalog", str(target)], capsys)
    lines = out.strip().splitlines()
    assert code == 1
    assert any(
        text.startswith("support.yaml: revisions[0].pipeline.local_vad_params.confidence: ") for text in lines
    ), lines
    assert any(
        text.startswith("sales.yaml: revisions[0].pipeline.stt_chain[0].provider: ") and "telepathy" in text
        for text in lines
    ), lines
    assert any(text.startswith("sales.yaml: revisions[0].system_prompt: ") and "budget" in text for text in lines), (
        lines
    )
    assert any(
        text.startswith("sales.yaml: revisions[0].pipeline.tts_chain[0]") and "DEEPGRAM_API_KEY" in text
        for text in lines
    ), lines


def test_web_call_mints_a_verifiable_token(capsys):
    code, out, _ = run(["web-call", "--agent-id", SUPPORT, "--var", "customer_name=Dana", "--var", "tier=gold"], capsys)
    assert code == 0
    body = json.loads(out)
    assert set(body) == {"livekit_url", "access_token", "room_name", "session_id"}
    claims = api.TokenVerifier("devkey", "secret").verify(body["access_token"])
    assert claims.room_config.agents[0].agent_name == "voice-worker"
    # The same core as the door: the session row exists, typed as asked.
    from records.store import SessionStore

    async def read():
        store = SessionStore(os.environ["DATABASE_URL"])
        try:
            return await store.get(uuid.UUID(body["session_id"]))
        finally:
            await store.aclose()

    row = asyncio.run(read())
    assert row is not None and row.session_type == "test"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--var", "nickname=Dee"], "nickname"),
        (["--var", "order_count=lots"], "order_count"),
        (["--var", "end_user_id=u1"], "end_user_id"),
        (["--var", "novalue"], "NAME=VALUE"),
    ],
)
def test_web_call_refuses_bad_variables_with_exit_2(argv, needle, capsys):
    code, out, err = run(["web-call", "--agent-id", SUPPORT, *argv], capsys)
    assert code == 2 and out == ""
    assert needle in err


def test_web_call_unknown_agent_and_bad_uuid(capsys):
    code, _, err = run(["web-call", "--agent-id", str(uuid.uuid4())], capsys)
    assert code == 2 and "not found" in err
    code, _, err = run(["web-call", "--agent-id", "support"], capsys)
    assert code == 2 and "not a UUID" in err


def test_inspect_dispatch_round_trip(capsys, monkeypatch):
    code, out, _ = run(["web-call", "--team-id", TEAM], capsys)
    token = json.loads(out)["access_token"]
    metadata = api.TokenVerifier("devkey", "secret").verify(token).room_config.agents[0].metadata
    code, out, _ = run(["inspect-dispatch"], capsys, stdin=metadata, monkeypatch=monkeypatch)
    report = json.loads(out)
    assert code == 0 and report["accepted"] is True
    assert report["claims"]["team_id"] == TEAM and report["agent"]["id"] == SUPPORT
    code, out, _ = run(
        ["inspect-dispatch"], capsys, stdin=metadata.replace('"grant":"', '"grant":"x'), monkeypatch=monkeypatch
    )
    assert code == 3 and json.loads(out)["reason"] in {"malformed_metadata", "bad_signature"}
    code, out, _ = run(["inspect-dispatch"], capsys, stdin="hello", monkeypatch=monkeypatch)
    assert code == 3 and json.loads(out) == {
        "accepted": False,
        "reason": "malformed_metadata",
        "detail": json.loads(out)["detail"],
    }


def _support_console(
    settings: Settings, services: CallServices, lines: asyncio.Queue[str | None]
) -> Coroutine[Any, Any, int]:
    """The console with the example support agent and Dana as the caller, reading `lines`."""
    return run_console(
        settings,
        agent_id=uuid.UUID(SUPPORT),
        team_id=None,
        seeds={"customer_name": "Dana"},
        services=services,
        lines=lines,
    )


async def test_console_holds_a_text_conversation(capsys):
    settings = Settings(_env_file=None, VOICE_WORKER_MODE="dev", **KEYS)

    def script(chat_ctx, tools):
        if tools and getattr(tools[0], "id", None) == "choose_procedure":
            return Reply(tool_calls=[("choose_procedure", {"name": "refund_request"})])
        return Reply(text="Refunds take five days.")

    fake = FakeLLM(script)
    services = CallServices(
        settings=settings, catalog=CatalogStore(EXAMPLE_CATALOG), session_kwargs=lambda _: {"llm": fake}
    )
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for line in ("how long do refunds take?", ""):
        lines.put_nowait(line)
    code = await _support_console(settings, services, lines)
    out = capsys.readouterr().out
    assert code == 0
    assert "agent> Hi Dana, thanks for calling Acme support. How can I help?" in out
    assert "agent> Refunds take five days." in out
    assert any(c.last_user_text == "how long do refunds take?" for c in fake.calls)


async def test_ctrl_c_in_the_console_ends_the_call_as_ctrl_d_does(capsys):
    # Ctrl-C is asyncio.run cancelling the console's task: the call ends in order (its session closed by the call,
    # not left to the blanket cancellation of every task), and the cancellation goes on up to asyncio.run
    from prometheus_client import REGISTRY

    def ended() -> float:
        labels = {"session_type": "test", "end_reason": "user_requested"}
        return REGISTRY.get_sample_value("voice_worker_calls_total", labels) or 0.0

    settings = Settings(_env_file=None, VOICE_WORKER_MODE="dev", **KEYS)
    fake = FakeLLM(lambda chat_ctx, tools: Reply(text="Refunds take five days."))
    services = CallServices(
        settings=settings, catalog=CatalogStore(EXAMPLE_CATALOG), session_kwargs=lambda _: {"llm": fake}
    )
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    lines.put_nowait("how long do refunds take?")
    before = ended()
    console = asyncio.create_task(_support_console(settings, services, lines))
    async with asyncio.timeout(30):
        while not lines.empty() or not any(c.last_user_text == "how long do refunds take?" for c in fake.calls):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the reply printed, the console waits for the next line
    console.cancel()
    with pytest.raises(asyncio.CancelledError):
        await console
    assert ended() == before + 1
    assert "agent> Refunds take five days." in capsys.readouterr().out


def test_unreachable_livekit_is_one_clear_line_and_the_worker_keeps_retrying():
    url = f"ws://127.0.0.1:{free_port()}"
    env = {**os.environ, "LIVEKIT_URL": url, "HEALTH_HOST": "127.0.0.1", "HEALTH_PORT": "0", **KEYS}
    # `start`: `dev` brings up a livekit-server of its own where nothing answers (worker/devstack.py), which is
    # the point of `dev` and not of this test. Production mode wants real-looking secrets and no fixed metrics port.
    env.update(
        VOICE_WORKER_MODE="production",
        LIVEKIT_API_KEY="APIkey-for-this-test",
        LIVEKIT_API_SECRET="lk-secret-for-this-test-" + "x" * 20,
        DISPATCH_SIGNING_SECRET="dispatch-secret-for-this-test-" + "y" * 20,
        PROMETHEUS_PORT="0",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "start"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum("cannot reach LiveKit" in text for text in seen) < 2:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
        assert proc.poll() is None, "the worker exited instead of retrying:\n" + "".join(seen)
        unreachable = [text for text in seen if "cannot reach LiveKit" in text]
        assert len(unreachable) >= 2, "".join(seen)
        assert url in unreachable[0] and "livekit-server --dev" in unreachable[0]
        assert not any("Traceback" in text for text in seen), "".join(seen)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_web_call_refuses_an_integer_out_of_range_with_exit_2(capsys):
    code, out, err = run(["web-call", "--agent-id", SUPPORT, "--var", "order_count=99999999999999999999999"], capsys)
    assert code == 2 and out == ""
    assert "order_count" in err and "out of range" in err and "9007199254740991" in err
