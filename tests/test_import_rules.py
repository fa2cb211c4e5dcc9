"""Layering: which parts of the package may import which (docs/architecture.md).

Read from the source (every ``import`` anywhere in a module, lazy ones included), so a
rule cannot be dodged by importing inside a function. A rule is (modules it applies to,
imports they must not make); prefixes match whole dotted names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sandbox"

CORE = ("sandbox.sql", "sandbox.dp", "sandbox.policy", "sandbox.policy_model",
        "sandbox.policy_keys", "sandbox.policy_review", "sandbox.grading", "sandbox.gate",
        "sandbox.ledger", "sandbox.audit")
SERVER_SIDE = ("sandbox.gate", "sandbox.ledger", "sandbox.engine", "sandbox.service",
               "sandbox.keys", "sandbox.vault", "sandbox.state", "sandbox.catalog",
               "sandbox.ingest", "sandbox.sql", "sandbox.cli", "sandbox.workspaces",
               "sandbox.scenarios", "duckdb", "tornado", "click")
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("the core holds no engine, CLI, web server or service", CORE,
     ("duckdb", "click", "tornado", "sandbox.service", "sandbox.cli", "sandbox.engine")),
    ("the service never imports the CLI", ("sandbox.service",), ("sandbox.cli", "click")),
    ("the notebook client imports nothing of the server side",
     ("sandbox.client", "sandbox.client_display"),
     SERVER_SIDE),
    ("OpenDP is used in one module only", ("sandbox",), ("opendp",)),
]
OPENDP_HOME = "sandbox.dp"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{a.name}" for a in node.names)
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("rule", "applies", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_import_rules(rule: str, applies: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    broken = []
    for name, path in sorted(_modules().items()):
        if not _under(name, applies) or (forbidden == ("opendp",) and name == OPENDP_HOME):
            continue
        bad = sorted(i for i in _imports(name, path) if _under(i, forbidden))
        if bad:
            broken.append(f"{name} imports {', '.join(bad)}")
    assert not broken, f"{rule}: " + "; ".join(broken)


def test_the_rules_read_real_imports() -> None:
    """The reader sees relative and lazy imports (a rule that reads nothing passes always)."""
    found = _imports("sandbox.gate", PACKAGE / "gate.py")
    assert "sandbox.sql.normalise" in found and "sandbox.ledger" in found
    assert "opendp.prelude" in _imports("sandbox.dp", PACKAGE / "dp.py")
