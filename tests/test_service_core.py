"""The service's core is plain Python: no tornado, no import cycles, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox.errors import EngineError, SandboxError
from sandbox.service.core import TimedExecutor
from sandbox.service.errors import Problem, QueryTimeout, error_body

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "sandbox" / "service"
MINE = ("__init__", "__main__", "bodies", "config", "core", "errors", "handlers", "limits",
        "openapi")


def test_the_core_imports_no_tornado() -> None:
    code = ("import sys, sandbox.service.core, sandbox.service.errors, sandbox.service.bodies; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tornado', "
            "'jupyterhub')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """Sibling modules of sandbox.service imported at module level (not inside functions)."""
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
    return out


def test_service_modules_have_no_import_cycle_and_stay_small() -> None:
    graph = {p.stem: _imports(p) & {q.stem for q in SERVICE.glob("*.py")}
             for p in SERVICE.glob("*.py") if p.stem != "__init__"}
    seen: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(mod: str, path: list[str]) -> None:
        if seen.get(mod) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, mod]))
        if seen.get(mod) == 2:
            return
        seen[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            visit(dep, [*path, mod])
        seen[mod] = 2

    for mod in sorted(graph):
        visit(mod, [])
    for name in MINE:
        lines = len((SERVICE / f"{name}.py").read_text(encoding="utf-8").splitlines())
        assert lines <= 500, f"sandbox/service/{name}.py has {lines} lines"


class FakeEngine:
    def __init__(self, sleep_s: float, fail: bool = False) -> None:
        self.sleep_s, self.fail = sleep_s, fail

    def execute(self, sql: str, params: object = None, timeout_s: float | None = None) -> str:
        time.sleep(self.sleep_s)
        if self.fail:
            raise EngineError("interrupted")
        return "table"


def test_the_timed_executor_makes_the_limit_strict() -> None:
    assert TimedExecutor(FakeEngine(0), 1.0).execute("SELECT 1") == "table"  # type: ignore[arg-type]
    with pytest.raises(QueryTimeout, match=r"time limit of 0\.01 s"):
        TimedExecutor(FakeEngine(0.03), 0.01).execute("SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(QueryTimeout):  # interrupted by the engine past the limit
        TimedExecutor(FakeEngine(0.03, fail=True), 0.01).execute("x")  # type: ignore[arg-type]
    with pytest.raises(EngineError) as info:  # failed within the limit: the engine's error
        TimedExecutor(FakeEngine(0, fail=True), 1.0).execute("x")  # type: ignore[arg-type]
    assert not isinstance(info.value, QueryTimeout)


def test_error_bodies_pass_on_only_developer_facing_text() -> None:
    assert error_body(Problem("limits.rate", "slow down", "wait")) == (
        429, {"error": {"code": "limits.rate", "message": "slow down", "hint": "wait"}})
    assert error_body(Problem("gate.star", "no *", None))[0] == 400
    state = SandboxError("database is locked at /srv/x")
    state.code = "state.error"
    assert error_body(state)[1]["error"]["code"] == "service.unavailable"
    for hidden in (Problem("export.index", "/srv/index missing"), Problem("keys.error", "k"),
                   ValueError("boom")):
        status, body = error_body(hidden)
        assert (status, body["error"]["code"]) == (500, "internal")
