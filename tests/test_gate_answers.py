"""Ordinary analyst queries are answered, with honest noise and error bars.

Each query runs through the whole gate on the tiny demo data. Its noisy answer
is compared with the exact answer computed by plain DuckDB on the plaintext
source: counts must fall within a few 95% half-widths of the truth.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from gatekit import SpyExecutor, policy
from sandbox.gate import Gate
from sandbox.ledger import InMemoryLedger

J = "persons p JOIN loans l ON p.person_id = l.person_id"

ANALYST_QUERIES: list[str] = [
    "SELECT count(*) FROM persons",
    "SELECT count(*) AS n FROM loans",
    "SELECT district, count(*) AS n FROM persons GROUP BY district",
    "SELECT district, count(*) AS n FROM persons GROUP BY 1 ORDER BY n DESC",
    "SELECT gender, avg(income) AS avg_income FROM persons GROUP BY gender",
    "SELECT education, count(*) FROM persons GROUP BY education",
    "SELECT employed, avg(credit_score) FROM persons GROUP BY employed",
    "SELECT sum(income) FROM persons WHERE age >= 30 AND age < 40",
    "SELECT avg(age), stddev(age), var_pop(age) FROM persons",
    "SELECT median(income) AS median_income FROM persons",
    "SELECT quantile_cont(credit_score, 0.9) AS p90 FROM persons",
    "SELECT district, median(credit_score) FROM persons GROUP BY district",
    "SELECT floor(age / 10) * 10 AS decade, count(*) FROM persons GROUP BY decade "
    "ORDER BY decade",
    "SELECT CASE WHEN age < 30 THEN 'young' WHEN age < 60 THEN 'middle' ELSE 'senior' END "
    "AS band, count(*), avg(income) FROM persons GROUP BY band",
    "SELECT income > 100000 AS high_income, count(*) FROM persons GROUP BY high_income",
    "SELECT status, count(*) FROM loans GROUP BY status",
    "SELECT purpose, sum(amount) AS total FROM loans GROUP BY purpose ORDER BY total DESC",
    "SELECT term_months, avg(rate) FROM loans GROUP BY term_months",
    "SELECT status, purpose, count(*) FROM loans GROUP BY status, purpose",
    "SELECT year(issued_on) AS y, count(*) FROM loans GROUP BY y ORDER BY y",
    "SELECT date_trunc('year', issued_on) AS y, sum(amount) FROM loans GROUP BY 1",
    "SELECT count(DISTINCT person_id) AS borrowers FROM loans WHERE purpose = 'mortgage'",
    "SELECT p.district, count(*) AS loans, count(DISTINCT p.person_id) AS people FROM " + J
    + " GROUP BY p.district",
    "SELECT p.district, avg(l.amount) FROM " + J + " WHERE l.status = 'default' "
    "GROUP BY p.district",
    "SELECT l.status, avg(p.credit_score) FROM " + J + " GROUP BY l.status",
    "SELECT count(*) FILTER (WHERE l.status IN ('overdue', 'default')) * 1.0 / count(*) "
    "AS bad_rate FROM loans l",
    "SELECT p.education, sum(CASE WHEN l.status = 'default' THEN 1 ELSE 0 END) AS defaults, "
    "count(*) AS n FROM " + J + " GROUP BY p.education",
    "SELECT d.name_zh, count(*) FROM persons p JOIN districts d ON p.district = d.district "
    "GROUP BY d.name_zh",
    "SELECT p.district, sum(l.amount) / count(DISTINCT p.person_id) AS per_person FROM " + J
    + " GROUP BY p.district",
    # equivalent spellings (sandbox/sql/normalise.py)
    "SELECT p.district, count(*) FROM loans l JOIN persons p USING (person_id) "
    "GROUP BY p.district",
    "SELECT district, count(DISTINCT person_id) AS people FROM loans JOIN persons "
    "USING (person_id) GROUP BY district",
    "WITH by_region AS (SELECT district, COUNT(*) AS n FROM persons GROUP BY district) "
    "SELECT district, n FROM by_region ORDER BY n DESC",
    "SELECT district AS d, n * 2 AS twice FROM (SELECT district, COUNT(*) AS n FROM persons "
    "GROUP BY district) t WHERE n > 300 ORDER BY twice LIMIT 3",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY income) AS med, "
    "percentile_disc(0.9) WITHIN GROUP (ORDER BY credit_score DESC) AS p10 FROM persons",
    # per-unit pre-aggregation (sandbox/sql/per_unit.py)
    "SELECT AVG(total) FROM (SELECT person_id, SUM(amount) AS total FROM loans "
    "GROUP BY person_id) t",
    "SELECT p.district, AVG(t.total) AS avg_total FROM persons p JOIN (SELECT person_id, "
    "SUM(amount) AS total FROM loans GROUP BY person_id) t ON t.person_id = p.person_id "
    "GROUP BY p.district",
    "SELECT district, AVG(n) AS loans_per_person FROM (SELECT p.person_id, p.district, "
    "COUNT(*) AS n FROM loans l JOIN persons p ON p.person_id = l.person_id "
    "GROUP BY p.person_id, p.district) t GROUP BY district",
    "WITH per AS (SELECT person_id, COUNT(*) AS n FROM loans WHERE status = 'default' "
    "GROUP BY person_id) SELECT count(*) AS repeat_defaulters FROM per WHERE n >= 2",
    "WITH adults AS (SELECT district, income FROM persons WHERE age >= 25) "
    "SELECT district, avg(income) FROM adults GROUP BY district",
    "WITH big AS (SELECT person_id, amount, status FROM loans WHERE amount > 100000) "
    "SELECT status, count(*) FROM big GROUP BY status",
    "SELECT s.band, count(*) FROM (SELECT CASE WHEN credit_score >= 700 THEN 'good' "
    "ELSE 'other' END AS band FROM persons) s GROUP BY s.band",
    "SELECT avg(amount / 12) AS monthly FROM loans",
    "SELECT sum(amount * rate) AS yearly_interest FROM loans",
    "SELECT district, count(*) FROM persons GROUP BY district HAVING count(*) > 100",
    "SELECT district, count(*) AS n FROM persons GROUP BY district ORDER BY n DESC LIMIT 3",
    "SELECT gender, count(*) FROM persons WHERE registered_on >= DATE '2015-01-01' "
    "GROUP BY gender",
    "FROM persons SELECT count(*) WHERE district = 'Siming'",
    "SELECT sum(TRY_CAST(credit_score AS DOUBLE)) FROM persons",
    "SELECT count(*) FROM persons p LEFT JOIN loans l ON p.person_id = l.person_id",
]


@pytest.fixture(scope="module")
def gate(tiny_vault):  # type: ignore[no-untyped-def]
    return Gate(policy(tiny_vault.catalog))


def test_there_are_enough_analyst_queries() -> None:
    assert len(ANALYST_QUERIES) >= 30


@pytest.mark.parametrize("sql", ANALYST_QUERIES, ids=[f"q{i:02d}" for i in range(len(
    ANALYST_QUERIES))])
def test_analyst_query_is_answered(gate, engine, sql: str) -> None:  # type: ignore[no-untyped-def]
    spy = SpyExecutor(engine)
    ledger = InMemoryLedger(100.0, 1e-4)
    release = gate.answer(sql, member="ana", ledger=ledger, executor=spy)
    # the answer, and the count of units a row bound cut when one applies
    q = gate.check(sql)
    assert spy.executed[1:] == ([q.cut_sql] if q.cut_sql else [])
    assert (q.cut_sql is not None) == (release.bounding["units_cut"] is not None)
    assert all("_v1" in e and sql not in e for e in spy.executed)  # engine tables only
    # Private keys (no declared domain) are released only above a noisy threshold, which
    # on the tiny data may suppress every group.
    assert release.rows or gate.check(sql).plan.threshold is not None
    assert all(len(r) == len(release.columns) for r in release.rows)
    assert release.epsilon == pytest.approx(gate.policy.privacy.epsilon_default)
    assert ledger.balance("ana").epsilon_spent == pytest.approx(release.epsilon)
    assert release.release_id and release.mechanisms


def _plain(demo_dir, sql: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    con = duckdb.connect()
    for name in ("persons", "loans", "districts"):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{demo_dir}/{name}"
                    ".parquet')")
    return con.execute(sql).fetchall()


def test_grouped_counts_are_close_to_the_truth(gate, engine, demo_dir) -> None:  # type: ignore[no-untyped-def]
    sql = "SELECT district, count(*) AS n FROM persons GROUP BY district"
    truth = dict(_plain(demo_dir, sql))
    release = gate.answer(sql, member="ana", ledger=InMemoryLedger(10, 1e-5), executor=engine,
                          epsilon=1.0)
    assert [r[0] for r in release.rows] == ["Siming", "Haicang", "Huli", "Jimei", "Tong'an",
                                            "Xiang'an"]
    for (district, n), (_, half) in zip(release.rows, release.ci95, strict=True):
        assert half is not None and half > 0
        assert abs(n - truth[district]) <= 4 * half


def test_bins_of_a_bounded_measure_are_public_keys(gate, engine, demo_dir) -> None:  # type: ignore[no-untyped-def]
    """FLOOR(x / w) * w over declared bounds: every bin from the bounds, zeros included, no
    threshold and no delta, as with declared keys."""
    sql = "SELECT floor(age / 10) * 10 AS decade, count(*) AS n FROM persons GROUP BY decade"
    q = gate.check(sql, 1.0)
    assert q.plan.threshold is None and q.plan.cost.delta == 0
    truth = {int(k): n for k, n in _plain(demo_dir, sql)}
    release = gate.answer(sql, member="ana", ledger=InMemoryLedger(10, 1e-5), executor=engine,
                          epsilon=1.0)
    assert [r[0] for r in release.rows] == list(range(10, 100, 10))  # age bounds [18, 90]
    for (decade, n), (_, half) in zip(release.rows, release.ci95, strict=True):
        assert abs(n - truth.get(decade, 0)) <= 4 * half
    # too many bins for the bounds: private keys, thresholded
    wide = gate.check("SELECT floor(income / 10) AS b, count(*) FROM persons GROUP BY b", 1.0)
    assert wide.plan.threshold is not None


def test_the_answer_says_how_many_units_the_row_bound_cut(gate, engine, tables) -> None:  # type: ignore[no-untyped-def]
    """Loans are cut at 10 per person: the release carries a noisy count of the persons
    who had a matching loan left out, planned and charged with the rest."""
    sql = "SELECT status, count(*) FROM loans WHERE amount > 50000 GROUP BY status"
    q = gate.check(sql, 1.0)
    assert q.plan.bounding is not None and q.plan.bounding.cost.epsilon < 0.05
    assert q.plan.cost.epsilon == pytest.approx(1.0)  # its share is part of the charge
    loans = tables["loans"]
    truth = engine.execute(f"SELECT count(DISTINCT person_id) FROM {loans} WHERE "
                           f"__sandbox_rank > 10 AND amount > 50000").column(0)[0].as_py()
    assert engine.execute(q.cut_sql).column(0)[0].as_py() == truth > 0
    release = gate.answer(sql, member="ana", ledger=InMemoryLedger(10, 1e-5), executor=engine,
                          epsilon=1.0)
    b = release.bounding
    assert b["rows_per_unit"] == {"loans": 10} and "left out" in b["note"]
    assert abs(b["units_cut"] - truth) <= 4 * b["units_cut_ci95"]
    assert gate.explain(sql, 1.0)["bounding"]["units_cut_ci95"] == b["units_cut_ci95"]
    # one row per person, or distinct persons only: nothing is cut, nothing is reported
    for plain in ("SELECT count(*) FROM persons",
                  "SELECT count(DISTINCT person_id) FROM loans WHERE status = 'default'"):
        assert gate.check(plain).plan.bounding is None
        assert gate.check(plain).explain()["bounding"]["units_cut"] is None


def test_date_parts_and_truncations_are_public_keys(gate, engine, demo_dir) -> None:  # type: ignore[no-untyped-def]
    """Calendar parts always; years and truncations from the declared range of issued_on
    ({from: 2015-01-01, to: 2026-12-31, step: day}): complete, zeros included, no threshold."""
    for sql, first, n in (
            ("SELECT month(issued_on) AS k, count(*) FROM loans GROUP BY k", 1, 12),
            ("SELECT extract(year FROM issued_on) AS k, count(*) FROM loans GROUP BY k",
             2015, 12),
            ("SELECT date_trunc('month', issued_on) AS k, count(*) FROM loans GROUP BY k",
             dt.datetime(2015, 1, 1), 144)):
        q = gate.check(sql, 1.0)
        assert q.plan.threshold is None and q.plan.cost.delta == 0, sql
        release = gate.answer(sql, member="ana", ledger=InMemoryLedger(10, 1e-5),
                              executor=engine, epsilon=1.0)
        assert len(release.rows) == n and release.rows[0][0] == first, sql
    truth = dict(_plain(demo_dir, "SELECT year(issued_on), count(*) FROM loans GROUP BY 1"))
    release = gate.answer("SELECT year(issued_on) AS y, count(*) AS n FROM loans GROUP BY y",
                          member="ana", ledger=InMemoryLedger(10, 1e-5), executor=engine,
                          epsilon=1.0)
    assert sum(truth.values()) > 0
    for (year, n), (_, half) in zip(release.rows, release.ci95, strict=True):
        assert n <= truth.get(year, 0) + 4 * half  # at most 10 loans per person are kept


def test_avg_is_close_and_has_per_cell_intervals(gate, engine, demo_dir) -> None:  # type: ignore[no-untyped-def]
    sql = "SELECT gender, avg(credit_score) FROM persons GROUP BY gender"
    truth = dict(_plain(demo_dir, sql))
    release = gate.answer(sql, member="ana", ledger=InMemoryLedger(10, 1e-5), executor=engine,
                          epsilon=2.0)
    for (gender, avg), (_, half) in zip(release.rows, release.ci95, strict=True):
        assert 300 <= truth[gender] <= 850
        assert abs(avg - truth[gender]) <= 4 * half


def test_having_order_limit_apply_to_noisy_result(gate, engine) -> None:  # type: ignore[no-untyped-def]
    release = gate.answer(
        "SELECT district, count(*) AS n FROM persons GROUP BY district ORDER BY n DESC LIMIT 2",
        member="ana", ledger=InMemoryLedger(10, 1e-5), executor=engine)
    assert len(release.rows) == 2
    assert release.rows[0][1] >= release.rows[1][1]


def test_explain_spends_nothing_and_touches_no_data(gate) -> None:  # type: ignore[no-untyped-def]
    plan = gate.explain("SELECT district, avg(income) FROM persons GROUP BY district", 1.0)
    assert plan["cost"]["epsilon"] == pytest.approx(1.0)
    assert "__sandbox_rank <= 1" in plan["rewritten_sql"]
    assert plan["columns"] == ["district", "AVG(income)"]
    assert len(plan["plan"]["measurements"]) == 2  # noisy sum and noisy count
    assert sum(m["epsilon"] for m in plan["plan"]["measurements"]) == pytest.approx(1.0)
    assert "noisy sum" in plan["accuracy"]["AVG(income)"]


def test_a_repeated_question_is_replayed_free_and_a_new_one_charged(gate, engine) -> None:  # type: ignore[no-untyped-def]
    ledger = InMemoryLedger(1.0, 1e-5)
    first = gate.answer("SELECT count(*) FROM persons", member="rep", ledger=ledger,
                        executor=engine, epsilon=0.25)
    assert not first.replayed
    for _ in range(3):  # the same SQL at the same epsilon: the stored answer, free
        again = gate.answer("SELECT count(*) FROM persons", member="rep", ledger=ledger,
                            executor=engine, epsilon=0.25)
        assert again.replayed and again.rows == first.rows
        assert again.release_id == first.release_id
        assert ledger.balance("rep").epsilon_spent == pytest.approx(0.25)
    # another member, another epsilon or other SQL text is a new question, charged
    gate.answer("SELECT count(*) FROM persons", member="other", ledger=ledger,
                executor=engine, epsilon=0.25)
    assert ledger.balance("other").epsilon_spent == pytest.approx(0.25)
    for sql, eps in [("SELECT count(*) FROM persons", 0.5),
                     ("SELECT COUNT(*) FROM persons", 0.25)]:
        fresh = gate.answer(sql, member="rep", ledger=ledger, executor=engine, epsilon=eps)
        assert not fresh.replayed
    assert ledger.balance("rep").epsilon_spent == pytest.approx(1.0)
    from sandbox.ledger import BudgetExceededError

    with pytest.raises(BudgetExceededError) as info:
        gate.answer("SELECT count(*) FROM persons WHERE age > 1", member="rep",
                    ledger=ledger, executor=engine, epsilon=0.25)
    assert "remains" in info.value.message
    # replays still work with the budget spent
    assert gate.answer("SELECT count(*) FROM persons", member="rep", ledger=ledger,
                       executor=engine, epsilon=0.5).replayed


def test_epsilon_outside_policy_is_refused(gate) -> None:  # type: ignore[no-untyped-def]
    from sandbox.sql.refusal import Refusal

    for eps in (0, -1, float("nan"), float("inf"), 2.5):
        with pytest.raises(Refusal) as info:
            gate.check("SELECT count(*) FROM persons", eps)
        assert info.value.code == "gate.epsilon"
