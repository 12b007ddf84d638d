"""The map is true: packages depend one way, no file imports itself back, the door never reaches the worker
process, and the README's layout table names exactly the shipped packages.

Every import counts, wherever it stands (module level, inside a function, under TYPE_CHECKING): a cycle hidden in a
function is still a cycle a reader has to untangle."""

from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
    "wheel"
]["packages"]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path, name: str) -> set[str]:
    """The shipped modules `path` imports (a `from package import module` names the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in named:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".")[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph() -> dict[str, set[str]]:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        for target in targets:
            if _package(target) != _package(module):
                packages[_package(module)].add(_package(target))
    return packages


def test_the_graph_is_read_from_every_shipped_package() -> None:
    assert {_package(m) for m in MODULES} == set(PACKAGES)
    # a sanity check on the reader itself: a known edge of each kind is seen
    assert "contract.dispatch" in GRAPH["contract.tokens"]
    assert "calls.bootstrap" in GRAPH["worker.server"]


def test_no_cycles_between_files() -> None:
    assert _cycles(GRAPH) == []


def test_no_cycles_between_packages() -> None:
    assert _cycles(package_graph()) == []


def test_the_door_depends_on_the_contract_catalog_and_records_only() -> None:
    allowed = {"door", "contract", "catalog", "records"}
    reach = {
        (module, target)
        for module, targets in GRAPH.items()
        if _package(module) == "door"
        for target in targets
        if _package(target) not in allowed
    }
    # The call page (dev, or staff with DOOR_CALL_PAGE) names the provider key an agent misses: that is the
    # provider registry's knowledge, read lazily, and nothing of the worker process.
    assert {(m, _package(t)) for m, t in reach} <= {("door.call_page", "pipelines")}


def test_the_worker_side_never_imports_the_door_or_the_cli() -> None:
    for module, targets in GRAPH.items():
        if _package(module) in ("door", "cli"):
            continue
        assert not {_package(t) for t in targets} & {"door", "cli"}, module


def test_only_the_cli_imports_the_simulations() -> None:
    for module, targets in GRAPH.items():
        if _package(module) in ("cli", "simulations"):
            continue
        assert "simulations" not in {_package(t) for t in targets}, module
    # records: voice mode reads the session record the worker wrote for the simulated call
    allowed = {"simulations", "calls", "catalog", "contract", "procedures", "pipelines", "records"}
    for module, targets in GRAPH.items():
        if _package(module) == "simulations":
            assert {_package(t) for t in targets} <= allowed, module


def test_the_contract_imports_nothing_of_ours_but_itself() -> None:
    for module, targets in GRAPH.items():
        if _package(module) == "contract":
            assert {_package(t) for t in targets} <= {"contract"}, module


def test_the_readme_layout_names_every_shipped_package() -> None:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout") : text.index("\n## ", text.index("## Layout") + 1)]
    named = set(re.findall(r"^\| `([a-z_]+)/`(?:, `([a-z_]+)/`)?", table, re.M))
    listed = {name for pair in named for name in pair if name}
    assert set(PACKAGES) <= listed, f"README layout misses {set(PACKAGES) - listed}"
    for name in listed:
        assert (ROOT / name).is_dir(), f"README layout names {name}/, which does not exist"


def test_docs_architecture_names_only_files_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:" + "|".join(PACKAGES) + r")/[a-z_/]+\.py)`", text))
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
