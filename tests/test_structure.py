"""
The layout stays easy to see: no import circles, small modules and functions,
and the direction of imports the design fixes (docs/design.md, the rooms).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("procpool", "workers", "sandbox")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 50


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Project modules that ``name`` imports, at module level or inside functions."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle_from(start: str) -> list[str] | None:
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, trail = stack.pop()
        for nxt in GRAPH[node]:
            # A package's __init__ importing its own submodules is not a circle.
            if nxt == start and not start.startswith(node + "."):
                return trail + [start]
            if nxt not in seen and not nxt.startswith(start + "."):
                seen.add(nxt)
                stack.append((nxt, trail + [nxt]))
    return None


def test_no_module_takes_part_in_an_import_circle():
    circles = [c for c in (_cycle_from(name) for name in GRAPH) if c]
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_worker_side_imports_no_host_internals_and_no_twisted():
    for name, path in MODULES.items():
        if not name.startswith("workers"):
            continue
        host = {m for m in GRAPH[name] if m.startswith(("procpool.", "sandbox"))
                and m not in ("procpool.errors", "procpool.settings", "procpool.storage.postgres")}
        assert not host, f"{name} imports host modules {sorted(host)}"
        assert "twisted" not in path.read_text(), f"{name} mentions twisted"


def test_the_sandbox_child_imports_neither_procpool_nor_twisted():
    for name in ("sandbox.child", "sandbox.policy", "sandbox.confine"):
        if name in MODULES:
            assert not any(m.startswith("procpool") for m in GRAPH[name]), name
            assert "import twisted" not in MODULES[name].read_text(), name


def test_the_sandbox_never_imports_the_api():
    for name in MODULES:
        if name.startswith("sandbox"):
            assert "procpool.api" not in GRAPH[name], name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    source = MODULES[name].read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_nothing_cites_files_outside_the_repository():
    for name, path in MODULES.items():
        text = path.read_text()
        for outside in ("spec/", "contract.md", "pool.md", "evennia-tests.md"):
            assert outside not in text, f"{name} cites {outside!r}; cite docs/ instead"
