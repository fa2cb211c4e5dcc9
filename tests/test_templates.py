"""The notebooks copied into developers' homes: notebooks_template/*.ipynb for everyone, and
notebooks_template/scenarios/<policy id>.ipynb for the members of each workspace of that
scenario (``__WORKSPACE__`` is replaced by the workspace's name when it is provisioned).

They must be valid nbformat 4 without stored outputs, and every SQL they send through the
client (``sb.sql(...)``, ``sb.explain(...)``, ``%%dpsql`` cells) must pass the gate with the
policy of the workspace they use; the refusal example (SQL inside a ``try:``) really is
refused.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from gatekit import ROOT, policy
from sandbox.errors import SandboxError
from sandbox.gate import Gate

TEMPLATES = ROOT / "notebooks_template"
NOTEBOOKS = sorted(TEMPLATES.glob("*.ipynb")) + sorted(TEMPLATES.glob("scenarios/*.ipynb"))
DEFAULT_WORKSPACE = "credit-underwriting"  # a Sandbox() without workspace (one membership)
POLICY_FOR = {
    "credit-underwriting": "credit_underwriting",
    "population-livelihood": "population_livelihood",
}
PLACEHOLDER = "__WORKSPACE__"


def policy_name(notebook: str, workspace: str) -> str:
    """The policy file a notebook's SQL is checked with (scenario notebooks: by policy id)."""
    if workspace == PLACEHOLDER:
        return notebook.removesuffix(".ipynb").replace("-", "_")
    return POLICY_FOR[workspace]


@dataclass
class SentSql:
    notebook: str
    cell: int
    sql: str
    epsilon: float | None
    workspace: str
    expect_refusal: bool


def _const_str(node: ast.AST, names: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _const_str(node.left, names), _const_str(node.right, names)
        if left is not None and right is not None:
            return left + right
    return None


def _const_num(node: ast.AST | None) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    return None


def _code(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def sent_sql(path: Path) -> list[SentSql]:
    """Every SQL string a notebook sends, with its epsilon and workspace."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    workspace = DEFAULT_WORKSPACE
    names: dict[str, str] = {}
    found: list[SentSql] = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = _code(cell)
        if src.startswith("%%dpsql"):
            first, _, body = src.partition("\n")
            args = shlex.split(first)[1:]
            eps = float(args[args.index("--epsilon") + 1]) if "--epsilon" in args else None
            ws = args[args.index("--workspace") + 1] if "--workspace" in args else workspace
            found.append(SentSql(path.name, i, body.strip(), eps, ws, False))
            continue
        code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("%"))
        tree = ast.parse(code)
        in_try = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
                  for stmt in t.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                value = _const_str(node.value, names)
                if value is not None:
                    names[node.targets[0].id] = value
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "Sandbox":
                for kw in node.keywords:
                    if kw.arg == "workspace":
                        workspace = _const_str(kw.value, names) or workspace
            if isinstance(func, ast.Attribute) and func.attr in ("sql", "explain") \
                    and isinstance(func.value, ast.Name) and func.value.id == "sb":
                assert node.args, f"{path.name} cell {i}: sb.{func.attr}() without SQL"
                sql = _const_str(node.args[0], names)
                assert sql is not None, f"{path.name} cell {i}: SQL is not a literal"
                eps = next((_const_num(kw.value) for kw in node.keywords
                            if kw.arg == "epsilon"), None)
                found.append(SentSql(path.name, i, sql, eps, workspace, id(node) in in_try))
    return found


def test_the_expected_notebooks_exist() -> None:
    assert {str(p.relative_to(TEMPLATES)) for p in NOTEBOOKS} >= {
        "getting-started.ipynb", "scenarios/credit-underwriting.ipynb",
        "scenarios/population-livelihood.ipynb"}
    ids = {re.search(r"^id: (\S+)", p.read_text(), re.M).group(1)  # type: ignore[union-attr]
           for p in (ROOT / "policies").glob("*.yaml")}
    for path in TEMPLATES.glob("scenarios/*.ipynb"):  # named by the scenario's policy id
        assert path.stem in ids, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_nbformat_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [], f"{path.name}: stored outputs in cell {cell.get('id')}"
        assert cell.execution_count is None
    raw = path.read_text(encoding="utf-8")
    # no secrets, paths to state or raw identifiers in the shipped notebooks
    assert not re.search(r"SANDBOX_(HOME|KEYSTORE|MASTER_KEY)|/var/lib|keystore", raw)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_sql_passes_the_gate_except_the_refusal_example(tiny_vault, path: Path) -> None:
    sent = sent_sql(path)
    assert sent, f"{path.name} sends no SQL"
    gates: dict[str, Gate] = {}
    for s in sent:
        name = policy_name(s.notebook, s.workspace)
        gate = gates.setdefault(name, Gate(policy(tiny_vault.catalog, name)))
        where = f"{s.notebook} cell {s.cell} ({s.workspace}): {s.sql}"
        if s.expect_refusal:
            with pytest.raises(SandboxError):
                gate.check(s.sql, s.epsilon)
        else:
            try:
                gate.check(s.sql, s.epsilon)
            except SandboxError as exc:
                pytest.fail(f"{where}\nrefused: {exc}")


def test_getting_started_covers_the_tour() -> None:
    path = TEMPLATES / "getting-started.ipynb"
    sent = sent_sql(path)
    assert [s for s in sent if s.expect_refusal], "no refusal example"
    assert any(s.notebook and s.cell for s in sent if not s.expect_refusal)
    code = "\n".join(_code(c) for c in json.loads(path.read_text())["cells"])
    for needle in ("sb.tables()", "sb.describe(", "sb.explain(", "sb.sql(", "sb.budget()",
                   "%load_ext sandbox.client", "%%dpsql --workspace"):
        assert needle in code, needle


def test_scenario_notebooks_use_the_provisioned_workspace() -> None:
    for path in TEMPLATES.glob("scenarios/*.ipynb"):
        sent = sent_sql(path)
        assert sent and {s.workspace for s in sent} == {PLACEHOLDER}, path.name


def test_every_notebook_names_its_workspace() -> None:
    """Demo developers belong to several workspaces: Sandbox() alone would be ambiguous."""
    for path in NOTEBOOKS:
        code = "\n".join(_code(c) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "code")
        assert "Sandbox()" not in code, path.name
        for line in code.splitlines():
            if line.startswith("%%dpsql"):
                assert "--workspace" in line, f"{path.name}: {line}"
