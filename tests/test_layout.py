"""The package's shape: no import cycles, the documented architecture matches the tree, a stable API.

These read the source tree; nothing is imported except the public package itself.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import vz_linux

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "vz_linux"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# The rooms of the pipeline: each is a sub-package with a docstring and re-exports.
ROOMS = ("build", "bundle", "vm", "oci", "cli")
# Cross-cutting leaves at the top: they import only each other (and never a room).
LEAVES = {"errors", "version", "profiles", "capabilities", "layout", "hashing", "arch", "run", "fsutil",
          "clock", "dotconfig", "lazy"}
# What `import vz_linux` offers: adding a name is a decision, removing one breaks users.
PUBLIC_API = {
    "AGENT_PROTOCOL_REVISION", "AGENT_VERSION", "AgentClient", "Architecture", "BuildOptions", "BundleMetadata",
    "FileInfo", "KernelBundle", "KernelBundleOptions", "KernelCapability", "KernelProfile", "KernelSourceInfo",
    "LinuxVm", "METADATA_SCHEMA_VERSION", "OciRuntimeInfo", "RuntimeConfig", "ToolchainInfo", "VmConfig",
    "VmShare", "VzLinuxError", "build_bundle", "ensure_kernel", "ensure_kernel_bundle", "ensure_kernel_profile",
    "install_bundle", "load_bundle", "validate_bundle", "__version__",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that runs, with whether it is inside a function. Imports under
    ``if TYPE_CHECKING:`` never run and cannot make a cycle; they are skipped."""
    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    yield from walk(other, in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, in_function
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from walk(child, inner)
    yield from walk(tree, False)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The vz_linux modules an import statement loads (a package's ``__init__`` counts as its name)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *(node.module.split(".") if node.module else [])])
    else:
        source = node.module or ""
    if source not in MODULES:
        return []
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for node, _ in _imports(ast.parse(path.read_text())):
            graph[module].update(t for t in _targets(module, node) if t != module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a graph with a cycle is reported, with the cycle's modules in order."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_counting_imports_inside_functions() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_leaves_never_import_a_room() -> None:
    graph = import_graph()
    for leaf in LEAVES:
        rooms = {t for t in graph[f"vz_linux.{leaf}"] if t.split(".")[1] in ROOMS}
        assert not rooms, f"leaf vz_linux.{leaf} imports {sorted(rooms)}"


def test_deferred_imports_say_why() -> None:
    """An import of our own package inside a function is allowed only with a comment saying why
    (start-up time): everything else is imported at the top, where a cycle would show at once."""
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node, in_function in _imports(ast.parse("\n".join(lines))):
            if not in_function or not _targets(module, node):
                continue
            window = lines[max(0, node.lineno - 3): node.end_lineno or node.lineno]
            if not any("#" in line for line in window):
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unexplained, f"deferred imports without a comment saying why: {unexplained}"


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_is_a_package_with_a_docstring(room: str) -> None:
    init = PACKAGE / room / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc, f"{init} has no docstring saying the room's job"


def test_top_level_holds_only_the_leaves() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == LEAVES


def test_architecture_doc_names_every_module_and_only_real_ones() -> None:
    text = ARCHITECTURE.read_text()
    # Module tables: one row per module, its path relative to src/vz_linux/ in backticks.
    named = set(re.findall(r"^\| `((?:[a-z_]+/)?[a-z_]+\.py)` \|", text, re.M))
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert actual - named == set(), f"modules missing from docs/architecture.md: {sorted(actual - named)}"
    stale = {n for n in named if not (PACKAGE / n).is_file()}
    assert not stale, f"docs/architecture.md names modules that do not exist: {sorted(stale)}"


def test_public_api_is_unchanged() -> None:
    """``__all__`` is the API; every name in it resolves (most load on first use, PEP 562)."""
    assert set(vz_linux.__all__) == PUBLIC_API
    assert dir(vz_linux) == sorted(PUBLIC_API)
    for name in PUBLIC_API:
        assert getattr(vz_linux, name) is not None, name
    with pytest.raises(AttributeError):
        vz_linux.NoSuchName  # noqa: B018


def test_profiles_doc_lists_each_contract() -> None:
    """docs/profiles.md's contract table is what KernelProfile.contract enforces."""
    from vz_linux.profiles import KernelProfile

    text = (ROOT / "docs" / "profiles.md").read_text().split("## Capability contracts", 1)[1].split("\n## ", 1)[0]
    for profile in KernelProfile:
        row = re.search(rf"^\| `{profile.value}` \| (.*) \|$", text, re.M)
        assert row, f"docs/profiles.md has no contract row for {profile.value}"
        assert set(re.findall(r"`([a-z0-9_]+)`", row[1])) == {c.value for c in profile.contract}


def test_profiles_md_probe_table_matches_the_registry() -> None:
    """docs/profiles.md's probe table lists every registry capability with its kind of probe."""
    from vz_linux.capabilities import REGISTRY

    text = (ROOT / "docs" / "profiles.md").read_text().split("## Capabilities: symbols and live probes", 1)[1]
    text = text.split("\n## ", 1)[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `([a-z0-9_]+)` \|[^|]*\| (agent|boot|snippet) \|", text, re.M)}
    assert set(rows) == {c.value for c in REGISTRY}, sorted(set(rows) ^ {c.value for c in REGISTRY})
    for cap, spec in REGISTRY.items():
        assert rows[cap.value] == ("agent" if spec.agent_probe else "boot" if spec.boot_probe else "snippet"), cap
