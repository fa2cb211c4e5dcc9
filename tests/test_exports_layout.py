"""The airlock's shape: no import cycles, no module over ~500 lines, and no dependency of
the airlock on the key store or the vault (the identifier index lives beside the vault)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sandbox"
AIRLOCK = sorted((ROOT / "exports").glob("*.py"))
MAX_LINES = 500


def _imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (module level, not TYPE_CHECKING)."""
    package = "sandbox." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__") + ".__init__"
    out: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If):  # if TYPE_CHECKING: ...
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:-node.level] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("path", [*AIRLOCK, ROOT / "identifier_index.py", ROOT / "report.py",
                                  ROOT / "service" / "console.py"], ids=lambda p: p.name)
def test_no_module_is_over_500_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_airlock_does_not_import_the_key_store_or_the_vault() -> None:
    for path in AIRLOCK:
        heavy = {m for m in _imports(path) if m.split(".")[:2] in (
            ["sandbox", "keys"], ["sandbox", "vault"], ["sandbox", "identifier_index"],
            ["sandbox", "catalog"]) or m.split(".")[0] in ("duckdb", "pyarrow", "numpy")}
        assert not heavy, (path.name, heavy)


def test_the_airlock_has_no_import_cycles() -> None:
    names = {f"sandbox.exports.{p.stem}": p for p in AIRLOCK if p.stem != "__init__"}
    graph = {n: {m for m in _imports(p) if m in names and m != n} for n, p in names.items()}
    done: set[str] = set()

    def visit(n: str, path: tuple[str, ...]) -> None:
        assert n not in path, " -> ".join([*path, n])
        if n not in done:
            for m in graph[n]:
                visit(m, (*path, n))
            done.add(n)

    for n in graph:
        visit(n, ())
