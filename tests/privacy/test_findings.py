"""Regression tests for audit findings, each through the real path.

Every test runs ``Gate.answer`` with an ``InMemoryLedger`` on a real locked ``Engine``
loaded with synthetic rows (``privkit``). "Refused for free" means a ``Refusal`` was
raised and the ledger shows nothing spent; anything that fails after the charge, or
raises anything but a ``Refusal``, is a failure.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import privkit as kit
import pytest

import sandbox
from sandbox.sql.refusal import Refusal

HERE = Path(__file__).resolve().parent
DISTRICTS = kit.base_world("laplace", False).districts


def world(persons: list[dict], loans: list[dict] | None = None) -> kit.World:
    return kit.World("test", tuple(persons), tuple(loans or ()), DISTRICTS)


def people(n: int, **kw: object) -> list[dict]:
    return [kit.person(person_id=f"u{i:05d}", **kw) for i in range(n)]


def refused_for_free_or_answered(o: kit.Outcome, what: str) -> None:
    if o.error is None:
        return
    assert isinstance(o.error, Refusal), f"{what}: raised {o.describe_error()}; charged " \
        f"epsilon {o.spent:.4g}"
    assert o.spent == 0, f"{what}: refused after charging {o.spent}"


def exact_moves(q: object, small: kit.Outcome, big: kit.Outcome) -> dict[str, tuple]:
    """measurement -> (|change| summed over groups, declared sensitivity)."""
    out = {}
    a, b = small.exact, big.exact
    assert a is not None and b is not None
    for m in q.ctx.measurements:  # type: ignore[attr-defined]
        if m.kind == "histogram":
            continue
        va, vb = a.column(m.name).to_pylist(), b.column(m.name).to_pylist()
        out[m.name] = (sum(abs(int(y or 0) - int(x or 0)) for x, y in zip(va, vb, strict=True)),
                       m.sensitivity)
    return out


def both(sql: str, d: kit.World, d2: kit.World, variant: str = "laplace",
         epsilon: float | None = None) -> tuple[kit.Outcome, kit.Outcome]:
    g = kit.gate(variant)
    return (kit.run(g, sql, kit.build_engine(d), epsilon),
            kit.run(g, sql, kit.build_engine(d2), epsilon))


# -- a. data-dependent engine errors: an error on one person's value is an oracle ------

OLD = [kit.person(person_id=f"o{i}", age=85, credit_score=None if i % 2 else 0)
       for i in range(5)]
BASE = people(30, age=40, credit_score=700) + OLD


@pytest.mark.parametrize("sql", [
    "SELECT sum(LEAST(coalesce(credit_score, 0) * 10000000, 1)) FROM persons WHERE age > 80",
    "SELECT sum(LEAST((credit_score) * 10000000, 1)) FROM persons WHERE age > 80",
    "SELECT sum(LEAST(CASE WHEN age > 80 THEN credit_score ELSE 0 END * 10000000, 1)) "
    "FROM persons",
    "SELECT sum(LEAST(TRY_CAST(credit_score AS INTEGER) * 10000000, 1)) FROM persons "
    "WHERE age > 80",
], ids=["coalesce", "parenthesised", "case", "try_cast"])
def test_integer_overflow_on_one_value_is_refused_or_answered(sql: str) -> None:
    d2 = world([*BASE, kit.person(person_id="target", age=85, credit_score=500)])
    for name, o in zip(("D", "D+target"), both(sql, world(BASE), d2), strict=True):
        refused_for_free_or_answered(o, f"{name}: {sql}")


def test_date_plus_days_out_of_range_is_refused_or_answered() -> None:
    sql = "SELECT count(*) FROM persons WHERE registered_on + 100000000 > DATE '2020-01-01'"
    d2 = world([*BASE, kit.person(person_id="target", registered_on=kit.DATE_MAX)])
    for name, o in zip(("D", "D+target"), both(sql, world(BASE), d2), strict=True):
        refused_for_free_or_answered(o, f"{name}: {sql}")


def test_implicit_text_to_number_conversion_is_refused_or_answered() -> None:
    sql = "SELECT count(*) FROM persons WHERE district = 5"
    numeric = [kit.person(person_id=f"n{i}", district=("5", "01")[i % 2]) for i in range(20)]
    d2 = world([*numeric, kit.person(person_id="target", district="Siming")])
    for name, o in zip(("D", "D+target"), both(sql, world(numeric), d2), strict=True):
        refused_for_free_or_answered(o, f"{name}: {sql}")


# -- b. a join that reaches other units' rows -----------------------------------------

def test_join_through_lookup_table_keeps_the_row_bound() -> None:
    sql = ("SELECT count(*) FROM persons p1 JOIN districts d ON p1.district = d.district "
           "JOIN persons p2 ON p2.district = d.district LEFT JOIN loans l "
           "ON l.person_id = p1.person_id AND l.person_id = p2.person_id")
    base = people(40, district="Siming")
    target = kit.person(person_id="target", district="Siming")
    loans = [kit.loan(person_id="target") for _ in range(10)]
    small, big = both(sql, world(base), world([*base, target], loans))
    for name, o in (("D", small), ("D+target", big)):
        refused_for_free_or_answered(o, f"{name}: {sql}")
    if small.error is None:
        q = kit.gate("laplace").check(sql)
        for m, (moved, sens) in exact_moves(q, small, big).items():
            assert moved <= sens, f"{m}: one person moved COUNT by {moved} > {sens}"


# -- c. one group released several times --------------------------------------------

def test_mixed_kind_case_keys_release_each_group_once() -> None:
    sql = ("SELECT CASE WHEN age < 30 THEN 1 WHEN age < 50 THEN '1' ELSE '01' END AS k, "
           "count(*) FROM persons GROUP BY k")
    ages = [20, 40, 60] * 30
    d = world([kit.person(person_id=f"u{i}", age=a) for i, a in enumerate(ages)])
    o = kit.run(kit.gate("laplace"), sql, kit.build_engine(d))
    refused_for_free_or_answered(o, sql)
    if o.release is not None:
        keys = [r[0] for r in o.release.rows]
        assert len(set(keys)) == len(keys), f"released keys {keys}: a group released twice"
        exact = [r["__k0"] for r in o.exact.to_pylist()]  # type: ignore[union-attr]
        assert len(set(exact)) == len(exact), f"exact groups {exact}"


# -- d. VAR / STDDEV centring ----------------------------------------------------------

def test_stddev_of_non_integer_rates_is_close_to_the_truth() -> None:
    rng = random.Random(4)
    rates = [round(rng.uniform(0.02, 0.2), 4) for _ in range(3000)]
    d = world(people(3000), [kit.loan(person_id=f"u{i:05d}", rate=r)
                             for i, r in enumerate(rates)])
    g = kit.gate("laplace")
    o = kit.run(g, "SELECT stddev_pop(rate) FROM loans", kit.build_engine(d),
                g.policy.privacy.epsilon_max)
    refused_for_free_or_answered(o, "stddev_pop(rate)")
    assert o.release is not None
    truth = statistics.pstdev(rates)
    got = o.release.rows[0][0]
    assert got is not None and abs(got - truth) < 0.01, f"stddev_pop(rate) = {got}, " \
        f"truth {truth:.4f}"


def test_variance_with_bounds_excluding_zero_stays_within_its_sensitivity() -> None:
    sql = "SELECT var_pop(credit_score / 2) FROM persons"
    base = people(50, credit_score=600)
    small, big = both(sql, world(base), world([*base, kit.person(person_id="t",
                                                                  credit_score=850)]))
    for name, o in (("D", small), ("D+t", big)):
        refused_for_free_or_answered(o, f"{name}: {sql}")
    if small.error is None:
        q = kit.gate("laplace").check(sql)
        for m, (moved, sens) in exact_moves(q, small, big).items():
            assert moved <= sens, f"{m}: one person moved it by {moved} > {sens}"


def test_stddev_of_a_division_does_not_fail_after_the_charge() -> None:
    d = world([kit.person(person_id=f"u{i}", income=2_000_000 * (i % 2)) for i in range(500)])
    o = kit.run(kit.gate("laplace"), "SELECT stddev(income / 1) FROM persons",
                kit.build_engine(d))
    refused_for_free_or_answered(o, "stddev(income / 1)")


# -- e. fixed-point sums near the int64 limit ----------------------------------------

def test_sum_with_huge_bounds_does_not_fail_after_the_charge() -> None:
    text = kit.POLICY_TEXTS["laplace"].replace(
        "income: {role: measure, bounds: [0, 2000000]}",
        "income: {role: measure, bounds: [0, 1000000000000000]}")
    assert text != kit.POLICY_TEXTS["laplace"]
    from sandbox.gate import Gate

    g = Gate(kit.policy_from_text(text))
    d = world(people(5000, income=10**15))
    o = kit.run(g, "SELECT sum(income) FROM persons", kit.build_engine(d))
    refused_for_free_or_answered(o, "sum(income) with bounds [0, 1e15] over 5000 rows")


# -- f. private-key groups in storage order ------------------------------------------

def test_private_key_groups_come_in_key_order_whatever_the_storage_order() -> None:
    sql = "SELECT city, count(*) FROM persons GROUP BY city"
    d = world([kit.person(person_id=f"u{i}", city=f"c{(i * 7) % 40:02d}") for i in range(400)])
    g = kit.gate("laplace")
    orders = []
    for order in (None, lambda rows: rows[::-1]):
        o = kit.run(g, sql, kit.build_engine(d, order))
        refused_for_free_or_answered(o, sql)
        assert o.exact is not None
        orders.append(o.exact.column("__k0").to_pylist())
    assert orders[0] == orders[1] == sorted(orders[0]), \
        f"group order depends on storage order: {orders[0][:5]} vs {orders[1][:5]}"


# -- g. fixed-point rounding ----------------------------------------------------------

def test_fixed_point_rounding_stays_within_the_sensitivity() -> None:
    sql = "SELECT sum(0.00005) FROM persons"
    base = people(10)
    small, big = both(sql, world(base), world([*base, kit.person(person_id="t")]))
    for name, o in (("D", small), ("D+t", big)):
        refused_for_free_or_answered(o, f"{name}: {sql}")
    if small.error is None:
        q = kit.gate("laplace").check(sql)
        for m, (moved, sens) in exact_moves(q, small, big).items():
            assert moved <= sens, f"{m}: one row moved the fixed-point sum by {moved} > {sens}"


# -- h. AVG from its measurements in the right order --------------------------------

def test_avg_beside_count_of_the_same_column_is_sum_over_count() -> None:
    sql = "SELECT count(income), avg(income) FROM persons"
    g = kit.gate("laplace")
    q = g.check(sql)
    spec = next(s for s in q.analysis.aggs if s.kind == "avg")
    assert [m.kind for m in q.ctx.measurements_of(spec)] == ["sum", "count"]
    rng = random.Random(2)
    incomes = [rng.randint(50_000, 150_000) for _ in range(2000)]
    d = world([kit.person(person_id=f"u{i}", income=x) for i, x in enumerate(incomes)])
    o = kit.run(g, sql, kit.build_engine(d), g.policy.privacy.epsilon_max)
    refused_for_free_or_answered(o, sql)
    assert o.release is not None
    avg = o.release.rows[0][1]
    assert abs(avg - statistics.fmean(incomes)) < 0.05 * statistics.fmean(incomes), avg


# -- i. charged, then failed ----------------------------------------------------------

def test_decimal_case_keys_serialise() -> None:
    sql = "SELECT CASE WHEN age < 30 THEN 0.5 ELSE 1.5 END AS k, count(*) FROM persons GROUP BY k"
    o = kit.run(kit.gate("laplace"), sql, kit.build_engine(world(people(20))))
    refused_for_free_or_answered(o, sql)
    assert o.release is not None
    json.dumps(o.release.to_dict(), allow_nan=False)


@pytest.mark.parametrize("order", ["count(*)", "2", "count(*) DESC, 1"])
def test_order_by_an_aggregate_or_a_position_is_answered(order: str) -> None:
    sql = f"SELECT status, count(*) FROM loans GROUP BY status ORDER BY {order}"
    loans = [kit.loan(person_id=f"u{i}", status=kit.STATUSES[i % 3]) for i in range(30)]
    o = kit.run(kit.gate("laplace"), sql, kit.build_engine(world(people(30), loans)))
    assert o.error is None, f"{sql}: {o.describe_error()}; charged {o.spent}"
    counts = [r[1] for r in o.release.rows]  # type: ignore[union-attr]
    if order != "count(*) DESC, 1":
        assert counts == sorted(counts)


@pytest.mark.parametrize("sql", ["SELECT sum(0) FROM persons", "SELECT median(5) FROM persons",
                                 "SELECT avg(7) FROM persons", "SELECT stddev(1) FROM persons"])
def test_constant_aggregates_are_answered_or_refused_for_free(sql: str) -> None:
    o = kit.run(kit.gate("laplace"), sql, kit.build_engine(world(people(20))))
    refused_for_free_or_answered(o, sql)


GAUSSIAN_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import privkit as kit
    sql, mode = sys.argv[1], sys.argv[2]
    g = kit.gate("gaussian")
    if mode == "explain":
        g.explain(sql)
    else:
        rows = [kit.person(person_id=f"u{{i}}", income=1000 * i) for i in range(200)]
        w = kit.World("g", tuple(rows), (), kit.base_world("gaussian", False).districts)
        o = kit.run(g, sql, kit.build_engine(w))
        assert o.error is None or isinstance(o.error, kit.Refusal), o.describe_error()
""")


@pytest.mark.parametrize("mode", ["answer", "explain"])
@pytest.mark.parametrize("sql", ["SELECT stddev(income) FROM persons",
                                 "SELECT avg(income) FROM persons"])
def test_gaussian_sums_of_large_measures_finish_quickly(sql: str, mode: str,
                                                       tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(sandbox.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    script = GAUSSIAN_SCRIPT.format(here=str(HERE))
    try:
        done = subprocess.run([sys.executable, "-c", script, sql, mode], env=env, timeout=10,
                              capture_output=True, text=True, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{mode} of {sql!r} under the Gaussian policy took more than 10 s")
    assert done.returncode == 0, done.stderr[-2000:]


# a sanity check of the helpers themselves: the base worlds respect the coupling rule

def test_base_units_stay_within_every_bound() -> None:
    for variant in kit.VARIANTS:
        pol = kit.policy(variant)
        for messy in (False, True):
            w = kit.base_world(variant, messy)
            per_unit: dict[str, int] = {}
            for r in w.loans:
                per_unit[r["person_id"]] = per_unit.get(r["person_id"], 0) + 1
            most = max(per_unit.values())
            assert most * most <= pol.privacy.max_groups_per_unit, (variant, messy, most)
            assert len({r["person_id"] for r in w.persons}) == len(w.persons)


# -- found by the checker: date and timestamp keys beyond Python's range ----------------

@pytest.mark.parametrize(("sql", "extreme"), [
    ("SELECT issued_on, count(*) FROM loans GROUP BY issued_on", {"issued_on": kit.DATE_INF}),
    ("SELECT issued_on, count(*) FROM loans GROUP BY issued_on", {"issued_on": kit.DATE_MIN}),
    ("SELECT date_trunc('month', issued_on) AS m, count(*) FROM loans GROUP BY m",
     {"issued_on": kit.DATE_MAX}),
], ids=["date_infinity", "date_bc", "date_trunc_far_future"])
def test_private_date_keys_beyond_pythons_range_do_not_fail_after_the_charge(
        sql: str, extreme: dict) -> None:
    loans = [kit.loan(person_id=f"u{i:05d}", issued_on=dt.date(2019, 1 + i % 12, 1))
             for i in range(60)]
    loans.append(kit.loan(person_id="target", **extreme))
    o = kit.run(kit.gate("laplace"), sql, kit.build_engine(world(people(60), loans)))
    refused_for_free_or_answered(o, sql)


def test_private_timestamp_keys_beyond_pythons_range_do_not_fail_after_the_charge() -> None:
    sql = "SELECT seen_at, count(*) FROM persons GROUP BY seen_at"
    base = [kit.person(person_id=f"u{i}", seen_at=dt.datetime(2020, 1, 1 + i % 28))
            for i in range(60)]
    o = kit.run(kit.gate("laplace"), sql, kit.build_engine(
        world([*base, kit.person(person_id="target", seen_at=kit.TS_MAX)])))
    refused_for_free_or_answered(o, sql)


@pytest.mark.parametrize("variant", kit.VARIANTS)
def test_a_private_key_count_is_the_thresholds_own_noisy_count(variant: str) -> None:
    """COUNT(*) by private keys is noised once: the threshold's noisy count decides which
    keys are kept and is the released value (so every released count reaches the
    threshold), and the query pays for one count, not two."""
    from sandbox.sql.plan import GROUP_COUNT_WEIGHT, release

    g = kit.gate(variant)
    q = g.check("SELECT city, count(*) AS n, avg(balance) AS b FROM persons GROUP BY city",
                1.0)
    p = q.plan
    assert p.threshold is not None and p.threshold in p.items
    from sqlglot import exp

    stars = [m for m in q.ctx.measurements
             if m.kind == "count" and isinstance(m.value, exp.Literal)]
    # one COUNT(*), the query's own, used by the threshold: no second, hidden count
    assert [m.name for m in stars] == [p.threshold.measurement.name]
    assert not p.threshold.measurement.hidden
    # parts: the threshold count, the sum and the count of AVG, the group count (a quarter)
    assert p.threshold.epsilon == pytest.approx(1.0 / (3 + GROUP_COUNT_WEIGHT))
    assert p.cost.epsilon <= 1.0 + 1e-9
    exact = {m.name: [50_000, 70_000, 90_000] for m in q.ctx.measurements}
    noisy = release(p, exact, 3)
    assert noisy.keep == [0, 1, 2]
    values = noisy.values[p.threshold.measurement.name]
    assert all(v >= p.threshold_value for v in values)
    assert all(abs(v - e) < 1000 for v, e in zip(values, [50_000, 70_000, 90_000],
                                                strict=True))
