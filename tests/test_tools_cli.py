"""`voice-worker tool-call`: one tool, once, outside a call: the request (secrets masked) on stderr, the mapped
result as JSON on stdout, a refusal as one line and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from cli import main as cli
from contract.settings import EXAMPLE_CATALOG

SUPPORT = "5b0e3c1a-9d4f-4c2b-8a1e-2f6d7c8b9a01"
TOKEN = "acme-orders-token-cli-93be"
ORDER = {"data": {"order": {"status": "delayed", "shipments": [{"carrier": "DHL"}], "estimated_delivery": None}}}


class OrderService(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        OrderService.seen.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
        body = json.dumps(ORDER if self.path.startswith("/v1/orders/1042") else {"error": "no"}).encode()
        self.send_response(200 if self.path.startswith("/v1/orders/1042") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    # a thread, not the test's event loop: the command runs its own asyncio.run()
    server = ThreadingHTTPServer(("127.0.0.1", 0), OrderService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    OrderService.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def catalog(tmp_path: Path, service: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG, target)
    tool = target / "tools" / "order-lookup.yaml"
    tool.write_text(tool.read_text().replace("https://orders.acme.example", service))
    monkeypatch.setenv("VOICE_WORKER_MODE", "dev")
    monkeypatch.setenv("TOOL_ACME_ORDERS_TOKEN", TOKEN)
    monkeypatch.delenv("CATALOG_PATH", raising=False)
    return target


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_an_agents_tool_runs_once_with_its_bindings_shown(catalog: Path, capsys):
    argv = ["tool-call", "--agent-id", SUPPORT, "--tool", "order_lookup", "--args", '{"order_number": "1042"}']
    code, out, err = run([*argv, "--var", "tier=PLATINUM", "--catalog", str(catalog)], capsys)
    assert code == 0, err
    assert json.loads(out) == {
        "order_status": "delayed",
        "carrier": "DHL",
        "tracking_number": None,
        "estimated_delivery": None,
    }
    [seen] = OrderService.seen
    assert seen["Authorization"] == f"Bearer {TOKEN}" and seen["X-Acme-Tier"] == "platinum"  # coerced enum
    request_line = next(line for line in err.splitlines() if line.startswith("request: "))
    request = json.loads(request_line.removeprefix("request: "))
    assert request["method"] == "GET" and request["url"].endswith(
        "/v1/orders/1042?fields=status%2Cshipments%2Cestimated_delivery"
    )
    assert request["headers"]["Authorization"] == "***"
    assert 'output_bindings: order_status = "delayed"' in err
    assert "answer: HTTP 200" in err
    assert TOKEN not in out + err


def test_a_tool_file_runs_with_variables_from_the_command_line(catalog: Path, capsys):
    tool_file = catalog / "tools" / "order-lookup.yaml"
    argv = ["tool-call", "--tool-file", str(tool_file), "--args", '{"order_number": "1042"}', "--var", "tier=gold"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads(out)["order_status"] == "delayed"
    assert OrderService.seen[-1]["X-Acme-Tier"] == "gold"


@pytest.mark.parametrize(
    ("extra_env", "argv", "code", "line"),
    [
        (
            {"VOICE_WORKER_MODE": "production"},
            ["--args", '{"order_number": "1042"}'],
            3,
            "voice-worker: tool order_lookup: refused: 127.0.0.1 is a loopback address",
        ),
        (
            {"TOOL_ACME_ORDERS_TOKEN": ""},
            ["--args", '{"order_number": "1042"}'],
            3,
            "voice-worker: tool order_lookup: refused: configuration.headers[0]: environment variable "
            "TOOL_ACME_ORDERS_TOKEN is not set",
        ),
        ({}, ["--args", "{}"], 3, "voice-worker: tool order_lookup: invalid_arguments: order_number: required"),
        ({}, ["--args", "[1]"], 2, "voice-worker: --args must be a JSON object"),
        ({}, ["--args", "{oops"], 2, "voice-worker: --args is not JSON (Expecting property name enclosed in double"),
    ],
)
def test_every_refusal_is_one_line_and_a_non_zero_exit(catalog: Path, capsys, monkeypatch, extra_env, argv, code, line):
    for name, value in extra_env.items():
        monkeypatch.setenv(name, value)
    base = ["tool-call", "--agent-id", SUPPORT, "--tool", "order_lookup", "--catalog", str(catalog)]
    got, out, err = run([*base, *argv], capsys)
    assert got == code and out == ""
    errors = [entry for entry in err.splitlines() if entry.startswith("voice-worker: ")]
    assert len(errors) == 1 and errors[0].startswith(line), err
    assert TOKEN not in err


def test_an_unknown_tool_names_the_agents_tools(catalog: Path, capsys):
    code, _, err = run(["tool-call", "--agent-id", SUPPORT, "--tool", "nope", "--catalog", str(catalog)], capsys)
    assert code == 2 and "agent Acme Support has no tool 'nope' (its tools: order_lookup)" in err
