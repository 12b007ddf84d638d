"""Dockerfile and .dockerignore, checked statically (no container engine runs here, so nothing is built).

The promises checked: two stages, the runtime one without build or test tools; dependencies from the hash-pinned
runtime lock only; every package the wheel ships is copied in; a non-root uid that Kubernetes can verify;
models that load offline as that user (proved during the build); the worker as the default command and a
health check on its health port; a build context without tests, `.env` files or caches.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RUNTIME_UID = 10001


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for name, value in re.findall(r"(\w+)=(\S+)", args):
                values[name] = value
        return values


def parse(text: str) -> list[Stage]:
    """Dockerfile instructions by stage (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            stages.append(Stage(name=match.group(2), base=match.group(1)))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def build(stages: list[Stage]) -> Stage:
    return stages[0]


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


# -- stages and dependencies ----------------------------------------------------------------------------------


def test_two_stages_on_the_same_base(stages: list[Stage]) -> None:
    assert [s.name for s in stages] == ["build", "runtime"]
    assert stages[0].base == stages[1].base  # the venv's interpreter path must exist in the runtime stage


def test_dependencies_come_from_the_hash_pinned_runtime_lock(build: Stage) -> None:
    copies = " ".join(build.all("COPY"))
    runs = " ".join(build.all("RUN"))
    assert "requirements.lock" in copies
    assert "requirements-dev.lock" not in copies + runs
    assert re.search(r"uv pip sync [^&]*--require-hashes[^&]*requirements\.lock", runs)
    assert "--no-deps" in runs  # the project itself adds no unpinned dependency
    assert build.env().get("UV_PYTHON_DOWNLOADS") == "never"


def test_runtime_stage_takes_only_the_venv_and_the_models(runtime: Stage) -> None:
    copies = runtime.all("COPY")
    assert all(c.startswith("--from=build") for c in copies), copies
    sources = {c.split()[-2] for c in copies}
    assert sources == {"/opt/venv", "/opt/models"}
    runs = " ".join(runtime.all("RUN"))
    for tool in ("pip install", "uv ", "apt-get", "pytest", "gcc"):
        assert tool not in runs, f"the runtime stage installs with {tool!r}"


def test_every_package_of_the_wheel_is_copied(build: Stage) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    copied = {c.split()[0] for c in build.all("COPY")}
    assert packages <= copied, f"not copied into the build: {sorted(packages - copied)}"
    # hatchling needs the readme pyproject names
    assert any("README.md" in c and "pyproject.toml" in c for c in build.all("COPY"))


def test_no_dev_dependency_can_reach_the_image() -> None:
    """requirements.lock (what the image installs) holds none of the test tools of the dev group."""
    lock = (ROOT / "requirements.lock").read_text()
    pinned = set(re.findall(r"^([A-Za-z0-9_.-]+)==", lock, re.MULTILINE))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = {re.split(r"[<>=~!\[ ]", spec)[0].lower() for spec in pyproject["dependency-groups"]["dev"]}
    assert "pytest" in dev
    assert not {p.lower() for p in pinned} & {
        "pytest",
        "pytest-asyncio",
        "pytest-timeout",
        "schemathesis",
        "hypothesis",
    }


# -- user, models, command ------------------------------------------------------------------------------------


def test_runs_as_a_fixed_non_root_uid(runtime: Stage) -> None:
    runs = " ".join(runtime.all("RUN"))
    match = re.search(r"useradd --uid (\d+) --gid (\S+) .*?(\S+)$", runs.split("&&")[1].strip())
    assert match and int(match.group(1)) == RUNTIME_UID
    user = runtime.all("USER")
    assert user == [match.group(3)], "exactly one USER, the created one"
    # USER comes before the default command and the model check
    keywords = [i.keyword for i in runtime.instructions]
    assert keywords.index("USER") < keywords.index("CMD")


def test_models_live_in_a_kept_path_and_load_offline_as_the_runtime_user(build: Stage, runtime: Stage) -> None:
    assert build.env()["HF_HOME"] == "/opt/models"
    assert "python -m livekit.agents download-files" in " ".join(build.all("RUN"))
    env = runtime.env()
    assert env["HF_HOME"] == "/opt/models"
    assert env["HF_HUB_OFFLINE"] == "1"
    models_copy = next(c for c in runtime.all("COPY") if "/opt/models" in c)
    assert "--chown=root:voice" in models_copy and re.search(r"--chmod=0?750", models_copy)
    # the proof: after USER, with HF_HUB_OFFLINE=1 in force, every model the worker uses is loaded
    keywords = [i.keyword for i in runtime.instructions]
    after_user = runtime.instructions[keywords.index("USER") :]
    checks = [i.args for i in after_user if i.keyword == "RUN"]
    assert any("silero.VAD.load()" in c and "init_eot()" in c and "init_vad()" in c for c in checks)


def test_runtime_environment_suits_a_read_only_root(runtime: Stage) -> None:
    env = runtime.env()
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    assert env["XDG_CACHE_HOME"].startswith("/tmp/")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["VOICE_WORKER_MODE"] == "production"
    assert env["DATABASE_URL"].startswith("sqlite:////var/lib/voice-worker/")
    assert runtime.all("WORKDIR") == ["/var/lib/voice-worker"]


def test_default_command_is_the_worker(runtime: Stage) -> None:
    assert runtime.all("CMD") == ['["voice-worker", "start"]']
    assert not runtime.all("ENTRYPOINT"), "an ENTRYPOINT would break `voice-worker door` as the command"


def test_healthcheck_probes_the_worker_health_port(runtime: Stage) -> None:
    (check,) = runtime.all("HEALTHCHECK")
    assert "CMD" in check and "HEALTH_PORT" in check and "'8081'" in check
    assert runtime.env()["HEALTH_PORT"] == "8081"
    exposed = " ".join(runtime.all("EXPOSE")).split()
    assert {"8081", "8000", "9100"} <= set(exposed)


# -- .dockerignore --------------------------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `**` spans directories, `*` and `?` stay within one."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(path: str, patterns: list[str]) -> bool:
    """The last matching pattern wins, `!` re-includes, and a matched directory takes everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern[1:] if negate else pattern)
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.local",
        ".env.example",
        "tests/test_cli.py",
        "tests/doubles/livekit_server.py",
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        "worker/__pycache__/cli.cpython-311.pyc",
        "catalog/__pycache__/x.pyc",
        "requirements-dev.lock",
        "uv.lock",
        "benchmarks/cold_start.py",
        "deploy/k8s/kustomization.yaml",
        "docs/operations.md",
        "var/voice-worker.db",
        "voice-worker.db",
    ],
)
def test_context_leaves_out(path: str, ignore_patterns: list[str]) -> None:
    assert _ignored(path, ignore_patterns), f"{path} would be sent to the build"


@pytest.mark.parametrize(
    "path",
    [
        "requirements.lock",
        "pyproject.toml",
        "README.md",
        "cli/main.py",
        "catalog/examples/support.yaml",
        "records/migrations/versions/0001_initial.py",
        "door/app.py",
        "pipelines/providers.py",
        "procedures/supervisor.py",
        "postcall/outbox.py",
    ],
)
def test_context_keeps_what_the_build_copies(path: str, ignore_patterns: list[str]) -> None:
    assert not _ignored(path, ignore_patterns), f"{path} is needed by the build but ignored"


def test_every_copy_source_survives_the_ignore_file(build: Stage, ignore_patterns: list[str]) -> None:
    for copy in build.all("COPY"):
        if copy.startswith("--from"):
            continue
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert not _ignored(source, ignore_patterns), source
