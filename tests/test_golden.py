"""Golden files: the SQL each rewrite pass produces, and proof that it runs.

Each file in tests/golden/ is named after a pass and holds blocks of
``-- input`` SQL followed by the expected SQL after the passes up to and
including that one (credit-underwriting policy). Every expected SQL is also
executed on the engine (``resolve.sql`` holds the checked flat query the passes start
from: after normalising, per-unit extraction and resolving). To refresh after a deliberate change:
``SANDBOX_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gatekit import policy
from sandbox.gate import Gate
from sandbox.sql.rewrite import PASSES

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SANDBOX_UPDATE_GOLDEN") == "1"


def read_cases(path: Path) -> list[tuple[str, str]]:
    cases, blocks = [], path.read_text().strip().split("\n\n")
    for block in blocks:
        lines = [ln for ln in block.splitlines() if ln.strip()]
        assert lines[0].startswith("-- "), f"{path}: each block starts with '-- <input sql>'"
        cases.append((lines[0][3:].strip(), "\n".join(lines[1:]).strip()))
    return cases


def all_cases() -> list[tuple[str, str, str]]:
    return [(p.stem, sql, expected) for p in sorted(GOLDEN.glob("*.sql"))
            for sql, expected in read_cases(p)]


@pytest.fixture(scope="module")
def gate(tiny_vault):  # type: ignore[no-untyped-def]
    return Gate(policy(tiny_vault.catalog))


# Before the rewrite: the checked, flat query the passes start from (normalise, per-unit
# extraction and resolve), named after its last step.
FRONT = "resolve"


def test_every_pass_has_a_golden_file() -> None:
    assert {p.stem for p in GOLDEN.glob("*.sql")} == {FRONT} | {name for name, _ in PASSES}
    assert all(len(read_cases(p)) >= 3 for p in GOLDEN.glob("*.sql"))


@pytest.mark.parametrize(("pass_name", "sql", "expected"), all_cases(),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(all_cases())])
def test_golden(gate, engine, pass_name: str, sql: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    got = gate._analyse(sql)[0].tree.sql("duckdb") if pass_name == FRONT else \
        gate.rewritten(sql, until=pass_name)
    if UPDATE:
        path = GOLDEN / f"{pass_name}.sql"
        text = path.read_text().replace(f"-- {sql}\n{expected}", f"-- {sql}\n{got}")
        path.write_text(text)
        return
    assert got == expected
    if pass_name != FRONT:  # the front still names the scenario's tables
        engine.execute(got)  # the rewrite runs on DuckDB


@pytest.mark.parametrize(("pass_name", "sql", "expected"), all_cases()[::3])
def test_the_rewrite_leaves_the_analysis_as_checked(gate, pass_name: str, sql: str,  # type: ignore[no-untyped-def]
                                                    expected: str) -> None:
    """Passes work on one copy: the analysed tree (and the expressions later passes read
    from it) is the same before and after the rewrite."""
    q = gate.check(sql, 1.0)
    assert q.analysis.tree.sql("duckdb") == gate._analyse(sql)[0].tree.sql("duckdb")
