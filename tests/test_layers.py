"""The import structure of the package, read from the source (ast).

* Every ``sandbox.*`` module imports on its own.
* No import cycle among sandbox modules at module level (imports inside functions run
  later and are allowed to break a cycle, but should be rare).
* The rules in FORBIDDEN: who may not import whom, at any level (a lazy import inside a
  function counts too), with the reason a newcomer needs.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sandbox"


@dataclass(frozen=True)
class Rule:
    """Modules matching ``importer`` may not import modules matching ``forbidden``; each
    is a module name, or a prefix ending in "." for every module under a package."""

    importer: str
    forbidden: str
    why: str
    exempt: frozenset[str] = frozenset()  # importers the rule does not apply to


def matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern) if pattern.endswith(".") else name == pattern


FORBIDDEN = (
    Rule("sandbox.cli.", "sandbox.cli",
         "command group modules take what they share from sandbox.cli.common; the package "
         "__init__ imports them to register their groups, so importing it back is a cycle",
         exempt=frozenset({"sandbox.cli.__main__",  # entry points: they run the whole CLI
                           "sandbox.cli.reference"})),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, module_level: bool) -> set[str]:
    """The sandbox modules ``name`` imports: only those run at import time if
    ``module_level`` (not in functions, not under TYPE_CHECKING), else every one.
    ``from package import sub`` counts as importing ``package.sub``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef
                                           | ast.Lambda):
                continue
            if module_level and isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES else base)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return {m for m in found if m in MODULES and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


@pytest.mark.parametrize("name", [m for m in MODULES if not m.endswith("__main__")])
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_no_import_cycles_at_module_level() -> None:
    graph = {name: imports(name, module_level=True) for name in MODULES}
    found = cycles(graph)
    described = ["; ".join(f"{m} imports {', '.join(sorted(graph[m] & set(c)))}" for m in c)
                 for c in found]
    assert not found, "import cycles among sandbox modules:\n" + "\n".join(described)


@pytest.mark.parametrize("rule", FORBIDDEN, ids=lambda r: f"{r.importer}->{r.forbidden}")
def test_forbidden_imports(rule: Rule) -> None:
    importers = [m for m in MODULES if matches(m, rule.importer) and m not in rule.exempt]
    assert importers, f"no module matches {rule.importer}: update the rule"
    broken = {m: bad for m in importers
              if (bad := sorted(i for i in imports(m, module_level=False)
                                if matches(i, rule.forbidden)))}
    assert not broken, f"{broken}: {rule.why}"


def test_the_import_reader_sees_a_cycle_and_a_back_import() -> None:
    """The checks above would pass on anything if the reader found no imports."""
    assert "sandbox.cli.common" in imports("sandbox.cli", module_level=True)
    assert "sandbox.audit" in imports("sandbox.cli.audit", module_level=True)
    assert "sandbox.cli" in imports("sandbox.cli.__main__", module_level=True)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
