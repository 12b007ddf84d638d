"""voice-worker uses livekit-agents through its public API, except in two adapter modules whose every reach is
named here and guarded by tests/test_worker_livekit_adapter.py; and the values it mirrors from livekit (because
livekit does not export them) still match the installed release.

Public, for this test, is what livekit documents as its API: a package's `__all__` (livekit hides from its docs
whatever a package leaves out of `__all__`), followed from `livekit.agents` down, plus the documented
`livekit.agents.beta`, `.evals` and `.testing` and the separate `livekit-local-inference` package; the RTC SDK,
the server API, the protocol buffers and the plugins are separate distributions, public as a whole. A name
imported from a submodule counts as public when the same object is exported (`voice.events.RunContext` is
`livekit.agents.RunContext`).

A reach is: importing anything else of livekit; `obj._name` / `getattr(obj, "_name")` with a name private to
livekit-agents; and, in a class derived from a livekit class, `self._name` where `_name` belongs to the livekit
base. When this test fails on a new reach, use the public API, or move the reach into an adapter module with a
guard test and name it in ADAPTER_REACHES (the issue's acceptance allows two such modules at most).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import re
import sys
import tomllib
import types
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import AgentServer, AgentSession, LanguageCode, TurnHandlingOptions, inference

ROOT = Path(__file__).resolve().parent.parent
PACKAGES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
    "wheel"
]["packages"]

# Every reach into livekit-agents internals voice-worker has, by the module that holds it; the guard test
# (tests/test_worker_livekit_adapter.py) covers each.
ADAPTER_REACHES: dict[str, set[str]] = {
    "worker/livekit_adapter.py": {
        "AgentServer._answer_availability",
        "AgentServer._get_effective_load",
        "AgentServer._is_available",
        "AgentServer._queue_msg",
        "AgentServer._reserved_slots",
    },
    "pipelines/speaking_rate.py": {"import livekit.agents.voice.transcription._speaking_rate"},
}
MAX_ADAPTER_MODULES = 2

EXPORT_ROOTS = (
    "livekit.agents",
    "livekit.agents.beta",
    "livekit.agents.evals",
    "livekit.agents.testing",
    "livekit.local_inference",
)
WHOLE_DISTRIBUTIONS = ("livekit.rtc", "livekit.api", "livekit.protocol", "livekit.plugins")
# Types a public signature requires that livekit does not export by name: (module, name) → (owner, parameter).
REQUIRED_BY_SIGNATURE: dict[tuple[str, str], tuple[Any, str]] = {
    ("livekit.agents.voice.agent_session", "SessionConnectOptions"): (AgentSession.__init__, "conn_options"),
    ("livekit.agents.voice.turn", "TurnDetectionMode"): (TurnHandlingOptions, "turn_detection"),
}
_LITERALS = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset)


class Surface:
    """The public modules and the ids of the public objects (kept alive, so the ids stay theirs)."""

    def __init__(self) -> None:
        self.modules: set[str] = set()
        self.objects: dict[int, object] = {}
        for root in EXPORT_ROOTS:
            self._walk(root)

    def _walk(self, name: str) -> None:
        if name in self.modules:
            return
        self.modules.add(name)
        module = importlib.import_module(name)
        for export in self.exports(module):
            value = getattr(module, export, None)
            if isinstance(value, types.ModuleType):
                if value.__name__.startswith(f"{name}."):
                    self._walk(value.__name__)
            elif not isinstance(value, _LITERALS):
                self.objects[id(value)] = value

    @staticmethod
    def exports(module: types.ModuleType) -> list[str]:
        names = getattr(module, "__all__", None)
        return list(names) if names is not None else [n for n in vars(module) if not n.startswith("_")]

    def why_not_public(self, module: str, name: str | None) -> str | None:
        """None when `from module import name` (or `import module`, name None) uses public API, else why not."""
        if module == "livekit" and name is not None:
            module, name = f"livekit.{name}", None
        if any(part.startswith("_") for part in module.split(".")) or (name or "").startswith("_"):
            return "a private module or name"
        if module.startswith(WHOLE_DISTRIBUTIONS):
            return None
        if name is None:
            return None if module in self.modules else "not exported by livekit"
        if f"{module}.{name}" in self.modules:
            return None
        if module in self.modules and name in self.exports(importlib.import_module(module)):
            return None
        value = getattr(importlib.import_module(module), name, None)
        if value is not None and not isinstance(value, _LITERALS) and id(value) in self.objects:
            return None
        required = REQUIRED_BY_SIGNATURE.get((module, name))
        if required is not None and _annotation_names(*required, name):
            return None
        return "not exported by livekit"


def _annotation_names(owner: Any, parameter: str, name: str) -> bool:
    annotation = (
        owner.__annotations__.get(parameter)
        if isinstance(owner, type)
        else inspect.signature(owner).parameters[parameter].annotation
    )
    return re.search(rf"\b{name}\b", str(annotation)) is not None


@cache
def surface() -> Surface:
    return Surface()


@cache
def livekit_private_names() -> frozenset[str]:
    """Every single-underscore name livekit-agents defines or sets on `self`, from its sources."""
    agents = Path(importlib.import_module("livekit.agents").__file__ or "").parent
    names: set[str] = set()
    for path in agents.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"\bdef (_[A-Za-z]\w*)", text))
        names.update(re.findall(r"\bself\.(_[A-Za-z]\w*)", text))
    return frozenset(names)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _shipped_files() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


def _module_name(relative: str) -> str:
    parts = relative.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _livekit_bases(cls: type) -> list[type]:
    return [base for base in cls.__mro__ if base.__module__.startswith("livekit.")]


def _base_private_names(bases: list[type]) -> set[str]:
    names: set[str] = set()
    for base in bases:
        names.update(n for n in vars(base) if _private(n))
        # a compiled class has no source: its vars() are all there is
        with contextlib.suppress(OSError, TypeError):
            names.update(re.findall(r"\bself\.(_[A-Za-z]\w*)", inspect.getsource(base)))
    return names


def reaches(relative: str, path: Path) -> set[str]:
    """The reaches into livekit internals in one shipped file."""
    tree = ast.parse(path.read_text(), relative)
    found: set[str] = set()
    imports_livekit = False
    # the file's own classes' private attributes (set on `self`) are its own business wherever they are read
    own = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "livekit" and not node.level:
            imports_livekit = True
            for alias in node.names:
                if surface().why_not_public(node.module or "", alias.name):
                    found.add(f"import {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "livekit":
                    imports_livekit = True
                    if surface().why_not_public(alias.name, None):
                        found.add(f"import {alias.name}")
        elif (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and node.attr in livekit_private_names()
            and node.attr not in own
            and not _is_self(node.value)
        ):
            found.add(f"{node.attr} on {ast.unparse(node.value)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and node.args[1].value in livekit_private_names()
        ):
            found.add(f"{node.func.id}(..., {node.args[1].value!r})")
    if imports_livekit and any(isinstance(node, ast.ClassDef) for node in tree.body):
        found |= _subclass_reaches(_load(relative, path), tree)
    return found


def _load(relative: str, path: Path) -> types.ModuleType:
    name = _module_name(relative)
    if name.split(".")[0] in PACKAGES:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_self(node: ast.expr) -> bool:
    """`self`, `cls` or `super()`: a class's own attributes, which `_subclass_reaches` judges."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _subclass_reaches(module: types.ModuleType, tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(module, node.name, None)
        if not isinstance(cls, type):
            continue
        bases = _livekit_bases(cls)
        if not bases:
            continue
        theirs = _base_private_names(bases)
        used = {
            n.attr
            for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
        }
        used |= {f.name for f in node.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
        found.update(f"{bases[0].__name__}.{name}" for name in used & theirs)
    return found


@pytest.fixture(scope="module")
def all_reaches() -> dict[str, set[str]]:
    return {relative: found for relative, path in _shipped_files() if (found := reaches(relative, path))}


def test_livekit_internals_are_reached_only_in_the_adapter_modules(all_reaches: dict[str, set[str]]) -> None:
    outside = {relative: found for relative, found in all_reaches.items() if relative not in ADAPTER_REACHES}
    assert not outside, (
        f"livekit-agents internals reached outside the adapter modules: {outside}; use the public API, or move the "
        "reach into an adapter module with a guard test (see this file's docstring)"
    )


def test_the_adapter_modules_reach_exactly_what_their_guard_test_covers(all_reaches: dict[str, set[str]]) -> None:
    assert len(ADAPTER_REACHES) <= MAX_ADAPTER_MODULES
    for relative, expected in ADAPTER_REACHES.items():
        assert all_reaches.get(relative, set()) == expected, relative


def test_the_scan_sees_a_reach_of_each_kind(tmp_path: Path) -> None:
    """The scanner itself: each kind of reach is found, and the public forms are not."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from livekit.agents import AgentServer, AgentSession, llm\n"
        "from livekit.agents.voice.events import RunContext\n"  # exported as livekit.agents.RunContext
        "from livekit.agents.utils.hw import get_cpu_monitor\n"
        "from livekit import rtc, local_inference\n"
        "from livekit.agents.worker import ServerEnvOption\n"
        "from livekit.agents.cli.log import JsonFormatter\n"
        "import livekit.agents.__main__\n"
        "def f(server):\n"
        "    server._proc_pool.on('process_closed', print)\n"
        "    return getattr(server, '_connecting', False)\n"
        "class Server(AgentServer):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self._mine = 0\n"
        "    def load(self):\n"
        "        return self._reserved_slots + self._mine\n"
    )
    assert reaches("probe.py", probe) == {
        "import livekit.agents.worker.ServerEnvOption",
        "import livekit.agents.cli.log.JsonFormatter",
        "import livekit.agents.__main__",
        "_proc_pool on server",
        "getattr(..., '_connecting')",
        "AgentServer._reserved_slots",
    }


def test_a_subclass_using_its_livekit_base_private_state_is_a_reach() -> None:
    from worker.livekit_adapter import AdmissionAdapter

    assert _base_private_names(_livekit_bases(AdmissionAdapter)) >= {"_reserved_slots", "_connecting", "_proc_pool"}


# --- values mirrored from livekit ------------------------------------------------------------------------------


def test_the_turn_detector_values_are_livekits() -> None:
    from livekit.agents.inference.eot.base import MIN_SILENCE_DURATION_MS
    from livekit.agents.inference.eot.languages import LOCAL_LANGUAGES

    from pipelines import turn_handling

    assert turn_handling.TURN_DETECTOR_SILENCE_MS == MIN_SILENCE_DURATION_MS
    assert set(LOCAL_LANGUAGES) == turn_handling.TURN_DETECTOR_LANGUAGES
    # and through the public API: the model's own threshold for each of those languages, English's for the rest
    detector = inference.TurnDetector(version=turn_handling.TURN_DETECTOR_VERSION)

    async def thresholds() -> dict[str, float | None]:
        return {
            language: await detector.unlikely_threshold(LanguageCode(language))
            for language in [*turn_handling.TURN_DETECTOR_LANGUAGES, "sv"]
        }

    found = asyncio.run(thresholds())
    assert {k: v for k, v in found.items() if k != "sv"} == LOCAL_LANGUAGES
    assert found["sv"] == LOCAL_LANGUAGES["en"]


def test_the_worker_defaults_are_livekits() -> None:
    from worker.server import create_server
    from worker.settings import Settings

    server = create_server(Settings(_env_file=None, VOICE_WORKER_MODE="dev"))  # type: ignore[call-arg]  # init-only option
    # production keeps livekit's warm job processes (one per CPU)
    assert server._idle_processes_per_mode.production == AgentServer._default_num_idle_processes.prod_default
    # a dev worker never reports itself full: livekit's convention, which the worker keeps
    assert math.isinf(AgentServer.__init__.__kwdefaults__["load_threshold"].dev_default)
    assert math.isinf(server._load_threshold_per_mode.dev)


def test_the_door_logs_json_with_the_keys_of_livekits_worker_lines() -> None:
    from livekit.agents.cli.log import JsonFormatter

    from telemetry.json_lines import JsonLineFormatter

    try:
        raise ValueError("the cause")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("voice_worker.door", logging.WARNING, __file__, 7, "refused %s", ("x",), exc_info)
    record.session_id = "s-1"
    record.logger = "voice_worker.door"
    mine, theirs = json.loads(JsonLineFormatter().format(record)), json.loads(JsonFormatter().format(record))
    assert mine.keys() == theirs.keys()
    assert {k: v for k, v in mine.items() if k != "timestamp"} == {k: v for k, v in theirs.items() if k != "timestamp"}
