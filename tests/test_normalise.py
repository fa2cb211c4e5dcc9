"""Equivalent spellings are answered exactly as their canonical form (sandbox/sql/normalise.py):
the same rewritten SQL, post-processing and privacy plan, so the privacy checker's
properties for the canonical form carry over."""

from __future__ import annotations

import pytest

from gatekit import policy
from sandbox.gate import Gate
from sandbox.sql.refusal import Refusal

J = "FROM loans l JOIN persons p"
PAIRS = [
    (f"SELECT p.district, count(*) {J} USING (person_id) GROUP BY p.district",
     f"SELECT p.district, count(*) {J} ON l.person_id = p.person_id GROUP BY p.district"),
    # an unqualified USING column is the left table's
    ("SELECT district, count(DISTINCT person_id) AS n FROM loans JOIN persons USING "
     "(person_id) GROUP BY district",
     "SELECT district, count(DISTINCT loans.person_id) AS n FROM loans JOIN persons ON "
     "loans.person_id = persons.person_id GROUP BY district"),
    ("SELECT count(*) FROM persons p LEFT JOIN districts d USING (district)",
     "SELECT count(*) FROM persons p LEFT JOIN districts d ON p.district = d.district"),
    ("SELECT percentile_cont(0.25) WITHIN GROUP (ORDER BY income) AS q FROM persons",
     "SELECT quantile_cont(income, 0.25) AS q FROM persons"),
    ("SELECT percentile_disc(0.9) WITHIN GROUP (ORDER BY age DESC) AS q FROM persons",
     "SELECT quantile_disc(age, 0.1) AS q FROM persons"),
    ("WITH r AS (SELECT district, count(*) AS n FROM persons GROUP BY district) "
     "SELECT district, n FROM r ORDER BY n DESC",
     "SELECT district, count(*) AS n FROM persons GROUP BY district ORDER BY n DESC"),
    ("SELECT district AS d, n * 2 AS twice FROM (SELECT district, count(*) AS n FROM "
     "persons WHERE age > 30 GROUP BY district) t WHERE n > 10 AND district <> 'Huli' "
     "ORDER BY twice LIMIT 3",
     "SELECT district AS d, count(*) * 2 AS twice FROM persons WHERE age > 30 GROUP BY "
     "district HAVING count(*) > 10 AND district <> 'Huli' ORDER BY twice LIMIT 3"),
    # the aggregation's own CTE and the outer query's other CTEs both stay readable
    ("SELECT n FROM (WITH a AS (SELECT district FROM persons WHERE age > 30) "
     "SELECT district, count(*) AS n FROM a GROUP BY district) t WHERE n > 5",
     "SELECT count(*) AS n FROM persons WHERE age > 30 GROUP BY district HAVING count(*) > 5"),
    ("WITH b AS (SELECT district, age FROM persons) SELECT n FROM (WITH a AS (SELECT district "
     "FROM b WHERE age > 30) SELECT district, count(*) AS n FROM a GROUP BY district) t",
     "SELECT count(*) AS n FROM persons WHERE age > 30 GROUP BY district"),
    ("WITH a AS (SELECT district FROM persons WHERE age > 30), "
     "r AS (SELECT district, count(*) AS n FROM a GROUP BY district) SELECT n FROM r",
     "SELECT count(*) AS n FROM persons WHERE age > 30 GROUP BY district"),
    ("WITH s AS (SELECT count(*) AS total, avg(income) AS a FROM persons), "
     "unused AS (SELECT 1 AS x FROM persons) SELECT total, a / 12 AS monthly FROM s",
     "SELECT count(*) AS total, avg(income) / 12 AS monthly FROM persons"),
]


@pytest.fixture(scope="module")
def gate(tiny_vault):  # type: ignore[no-untyped-def]
    return Gate(policy(tiny_vault.catalog))


@pytest.mark.parametrize(("spelling", "canonical"), PAIRS)
def test_a_spelling_is_answered_as_its_canonical_form(gate: Gate, spelling: str,
                                                       canonical: str) -> None:
    a, b = gate.check(spelling, 1.0), gate.check(canonical, 1.0)
    assert a.executed_sql == b.executed_sql
    assert a.post_sql == b.post_sql
    assert a.plan.to_dict() == b.plan.to_dict()
    assert [o.name for o in a.outputs] == [o.name for o in b.outputs]


def test_within_group_needs_a_constant_fraction_when_descending(gate: Gate) -> None:
    with pytest.raises(Refusal) as info:
        gate.check("SELECT percentile_cont(age / 100) WITHIN GROUP (ORDER BY income DESC) "
                   "FROM persons")
    assert info.value.code == "gate.construct_not_allowed"
