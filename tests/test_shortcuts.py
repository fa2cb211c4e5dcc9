"""Bounds that cannot change a value may be left out: the exact aggregates stay identical."""

from __future__ import annotations

import pytest
from test_gate_answers import ANALYST_QUERIES

from gatekit import policy
from sandbox.gate import Gate


@pytest.fixture(scope="module")
def gate(tiny_vault):  # type: ignore[no-untyped-def]
    return Gate(policy(tiny_vault.catalog))


@pytest.mark.parametrize("sql", ANALYST_QUERIES[:25])
def test_shortcut_sql_gives_identical_exact_aggregates(gate, engine, sql: str) -> None:  # type: ignore[no-untyped-def]
    q = gate.check(sql)
    fast = gate._engine_sql(q, engine)
    full = engine.execute(q.executed_sql).to_pylist()
    short = engine.execute(fast).to_pylist()
    def rows(result: list[dict]) -> list[str]:  # private-key groups come in any order
        return sorted(repr(sorted(r.items())) for r in result)

    if "RANDOM()" in q.executed_sql:  # groups kept per unit are drawn at random each time
        assert sorted(map(repr, (r.get("__k0") for r in short))) == \
            sorted(map(repr, (r.get("__k0") for r in full)))
    else:
        assert rows(short) == rows(full)


def test_only_no_op_bounds_are_left_out(gate, engine) -> None:  # type: ignore[no-untyped-def]
    q = gate.check("SELECT sum(p.age), sum(l.amount) FROM persons p JOIN loans l "
                   "ON p.person_id = l.person_id")
    fast = gate._engine_sql(q, engine)
    lo, hi = engine.column_range("persons_v1", "age")
    assert lo >= 18 and hi <= 90
    assert "p.age > 90" in q.executed_sql and "p.age > 90" not in fast
    assert "__sandbox_rank <= 1)" in q.executed_sql
    assert "__sandbox_rank <= 1)" not in fast  # one row per person: the bound is a no-op
    most = engine.column_range("loans_v1", "__sandbox_rank")[1]
    assert most > 10 and "__sandbox_rank <= 10" in fast  # some people have more loans
    amount_hi = engine.column_range("loans_v1", "amount")[1]
    assert ("l.amount > 2000000" in fast) == (amount_hi > 2_000_000)
