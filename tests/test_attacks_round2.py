"""Second review round, as an attacker (an authorised member): dummy data, the noisy count of
units a row bound cut, zCDP accounting of pure-DP charges, bins of a bounded measure as
public keys, and delta-method intervals.

One test per attack, each a regression guard. Three broke and are fixed: the cut count
over two row-bounded tables read a unit's rows to a power (now one table's bound is lifted
at a time), it counted every left row under a LEFT JOIN (now the lifted table's unit must
be present), and a bin width too small for the bounds raised OverflowError (now the keys
are private).
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import random
import sys
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "privacy"))
import privkit as kit

from sandbox import dp, dummy
from sandbox import gate as gatemod
from sandbox.engine import Engine
from sandbox.exports import CheckContext, FrameItem, run_checks
from sandbox.exports.checks import ReleaseRecord
from sandbox.ledger import balance_of, fits
from sandbox.sql.plan import Noisy
from sandbox.sql.refusal import Refusal

# persons (1 row per unit) joined to loans twice: each unit keeps at most 1 x 10 x 10 rows
SELF_JOIN = ("SELECT count(*) FROM persons p JOIN loans l1 ON p.person_id = l1.person_id "
             "JOIN loans l2 ON p.person_id = l2.person_id")
HEAVY = 400  # loans of one adversarial unit (the bound keeps 10)


def _heavy_world() -> kit.World:
    base = kit.base_world("laplace", False)
    return base.plus("heavy", [kit.person()], [kit.loan() for _ in range(HEAVY)])


def _cut_relation_rows(sql: str, eng: Engine) -> int:
    """Rows of the relation the count of units cut (``CheckedQuery.cut_sql``) reads."""
    q = kit.gate("laplace").check(sql, 1.0)
    assert q.cut_sql is not None
    rel = sqlglot.parse_one(q.cut_sql, read="duckdb").find(exp.Subquery)
    assert rel is not None
    inner = rel.this.sql("duckdb")
    return int(eng.execute(f"SELECT count(*) AS n FROM ({inner}) AS t").column(0)[0].as_py())


# -- 2. the noisy count of units cut by the row bound ------------------------------------------
def test_units_cut_moves_by_at_most_one_with_a_heavy_unit_in_a_self_join() -> None:
    """Held: D vs D + one unit with 40x the row bound, through a double join on the unit."""
    g = kit.gate("laplace")
    small = kit.run(g, SELF_JOIN, kit.build_engine(kit.base_world("laplace", False)), 1.0)
    big = kit.run(g, SELF_JOIN, kit.build_engine(_heavy_world()), 1.0)
    assert small.error is None and big.error is None
    assert small.cut is not None and big.cut is not None
    assert abs(big.cut - small.cut) <= 1
    # planned with sensitivity 1 and charged with the query
    q = g.check(SELF_JOIN, 1.0)
    assert q.plan.bounding is not None and q.plan.bounding.sensitivity == 1
    assert q.plan.cost.epsilon == pytest.approx(1.0)


def test_the_cut_count_reads_rows_linear_in_one_units_rows() -> None:
    eng = kit.build_engine(_heavy_world())
    rows = _cut_relation_rows(SELF_JOIN, eng)
    base_rows = 24 * 2 * 2  # every base unit: one person, at most 2 loans
    assert rows <= base_rows + 2 * HEAVY * 10, f"{rows} rows for a unit of {HEAVY} loans"


def test_units_cut_under_a_left_join_counts_only_units_that_were_cut() -> None:
    g = kit.gate("laplace")
    eng = kit.build_engine(kit.base_world("laplace", False))  # nobody above 10 loans
    sql = "SELECT count(*) FROM persons p LEFT JOIN loans l ON p.person_id = l.person_id"
    out = kit.run(g, sql, eng, 1.0)
    assert out.error is None
    assert out.cut == 0


# -- 4. bins of a bounded measure as public keys -----------------------------------------------
BINS = [
    "SELECT floor(balance / 500) * 500 AS b, count(*), avg(income) FROM persons GROUP BY b",
    "SELECT floor(rate / 0.05) * 0.05 AS b, count(*) FROM loans GROUP BY b",
    "SELECT floor(amount / 100000) AS b, sum(amount) FROM loans GROUP BY b",
    "SELECT floor(age / -10) AS b, floor(balance / 2500) AS c, count(*) FROM persons "
    "GROUP BY b, c",
    "SELECT floor(age / 10) * 0.1234567890123456789 AS b, count(*) FROM persons GROUP BY b",
]


@pytest.mark.parametrize("sql", BINS)
def test_public_bins_release_exactly_the_declared_keys_whatever_the_data(sql: str) -> None:
    """Held: out-of-bound values, NaN, +-inf, -0.0 and NULL fall in no declared bin; the keys
    released are the policy's, in order, on every neighbour; nothing fails after the charge."""
    g = kit.gate("laplace")
    q = g.check(sql, 1.0)
    assert q.plan.threshold is None and q.plan.cost.delta == 0
    declared = [list(r) for r in gatemod.key_rows(q.ctx)]
    neg_zero = kit.base_world("laplace", True).plus("negzero", [kit.person(balance=-0.0)],
                                                     [kit.loan(rate=-0.0, amount=0)])
    others = [w for _, w in kit.neighbours("laplace", True)][:6]
    worlds = [kit.base_world("laplace", True), neg_zero, *others]
    for world in worlds:
        out = kit.run(g, sql, kit.build_engine(world), 1.0)
        assert out.error is None, (world.name, out.describe_error())
        assert out.release is not None
        nkeys = len(q.analysis.keys)
        assert [r[:nkeys] for r in out.release.rows] == declared


@pytest.mark.parametrize("sql", [
    "SELECT floor(age / 1e-307) AS b, count(*) FROM persons GROUP BY b",
    "SELECT floor(age / 5e-324) * 2 AS b, count(*) FROM persons GROUP BY b",
])
def test_a_bin_width_that_overflows_is_a_refusal_or_an_answer_not_a_crash(sql: str) -> None:
    with contextlib.suppress(Refusal):
        kit.gate("laplace").check(sql, 1.0)


# -- 5. delta-method intervals: post-processing only ------------------------------------------
def test_intervals_and_values_depend_only_on_the_noisy_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Held: with the noise fixed, two neighbouring datasets give identical rows and
    intervals (AVG, VAR, STDDEV by the delta method), so nothing exact reaches them."""
    sql = ("SELECT district, avg(income) AS a, var_samp(age) AS v, stddev(credit_score) AS s, "
           "count(*) AS n FROM persons GROUP BY district")

    def fixed(p: Any, exact: dict[str, list[Any]], groups: int, cut: int | None = None
              ) -> Noisy:
        values: dict[str, list[Any]] = {}
        for i, item in enumerate(p.items):
            m = item.measurement
            raw = [(1000 + 37 * i + g) * (7 if m.kind == "sum" else 1) for g in range(groups)]
            values[m.name] = raw if m.scale == 1 else [v / m.scale for v in raw]
        return Noisy(values, list(range(groups)), 0, None if p.bounding is None else 0)

    monkeypatch.setattr(gatemod, "release", fixed)
    g = kit.gate("laplace")
    outs = [kit.run(g, sql, kit.build_engine(w), 1.0) for w in
            [kit.base_world("laplace", True)] + [w for _, w in kit.neighbours("laplace", True)]]
    first = outs[0].release
    assert first is not None
    assert any(c is not None for r in first.ci95 for c in r[1:4])
    for o in outs[1:]:
        assert o.release is not None, o.describe_error()
        assert o.release.rows == first.rows and o.release.ci95 == first.ci95


# -- 3. zCDP accounting of pure-DP charges ---------------------------------------------------
def _random_cost(rnd: random.Random, delta_budget: float) -> dp.Cost:
    e = rnd.choice([1e-6, 0.01, 0.1, 0.5, 1.0, 2.0])
    kind = rnd.random()
    if kind < 0.45:
        return dp.plan_laplace(e, 1.0, integer=True).cost
    if kind < 0.65:
        return dp.plan_threshold(e, 1e-7, 1, 1)[0].cost
    if kind < 0.8:
        return dp.plan_gaussian(e, max(min(1e-7, delta_budget / 2), 1e-300), 1.0,
                                integer=True).cost
    if kind < 0.9:  # a query of three Laplace parts and a threshold
        return dp.compose([dp.plan_laplace(e / 4, 1.0, integer=True).cost] * 3
                          + [dp.plan_threshold(e / 4, 1e-7, 1, 1)[0].cost])
    return dp.plan_binned_quantile(e, 0.5, 1).cost


@pytest.mark.parametrize("delta_budget", [0.0, 5e-324, 1e-7, 1e-5, 1e-3, 0.5,
                                          1 - 2**-53])
def test_a_history_admitted_charge_by_charge_never_overspends(delta_budget: float) -> None:
    """Held: histories built the way the ledger admits them (compose with the budget's
    delta) stay within epsilon and delta, and the zCDP figure charged equals an independent
    computation: basic approximate-DP parts + OpenDP's conversion of every rho (Gaussian and
    eps_i^2/2 of each pure part) at the delta those parts leave."""
    rnd = random.Random(f"acct-{delta_budget}")
    for _ in range(12):
        budget = rnd.choice([1.0, 5.0, 10.0])
        history: list[dp.Cost] = []
        for _ in range(rnd.randint(1, 30)):
            c = _random_cost(rnd, delta_budget)
            if fits(dp.compose([*history, c], delta_budget), budget, delta_budget):
                history.append(c)
        total, basic = dp.compose(history, delta_budget), dp.compose(history)
        assert fits(total, budget, delta_budget)
        assert total.epsilon <= basic.epsilon
        b = balance_of(budget, delta_budget, history)
        assert b.epsilon_spent <= budget + 1e-9 and b.delta_spent <= delta_budget + 1e-15
        if total.epsilon < basic.epsilon:
            approx_eps = math.fsum(h.epsilon - (h.zcdp_epsilon or 0) - (h.pure_epsilon or 0)
                                   for h in history)
            approx_delta = math.fsum(h.delta - (h.zcdp_delta or 0) for h in history)
            rho = math.fsum(h.rho + (h.pure_rho or 0) for h in history)
            independent = approx_eps + dp.rho_to_epsilon(rho, delta_budget - approx_delta)
            assert independent <= total.epsilon * (1 + 1e-9) + 1e-12
            assert total.delta <= delta_budget * (1 + 1e-12)


# -- 1. dummy data -----------------------------------------------------------------------------
def test_a_dummy_frame_relabelled_as_real_is_never_a_clean_export() -> None:
    """Held, with a caveat: the export refusal of dummy results is a label (`dummy-` release
    id, frame attrs) that the member controls in the notebook. Stripped of it (attrs edited,
    the id swapped for a real release's, or no id at all) a dummy frame is no longer refused
    as dummy, but its numbers match no release of the workspace: provenance sends it to a
    reviewer, flagged, never a clean pass. (Dummy values describe no one; the member could
    submit any file for review anyway.)"""
    g = kit.gate("laplace")
    sql = "SELECT district, count(*) AS n, avg(income) AS a FROM persons GROUP BY district"
    real = kit.run(g, sql, kit.build_engine(kit.base_world("laplace", False)), 1.0).release
    assert real is not None
    eng = Engine.from_arrow([(t.engine_table, t.table, t.privacy_unit)
                             for t in dummy.dummy_tables(kit.policy("laplace"))])
    fake = dummy.answer(g, sql, member="m", ledger=dummy.DummyLedger("w"), executor=eng)
    assert fake.release_id.startswith(dummy.DUMMY_PREFIX)
    record = ReleaseRecord.from_response(real.to_dict(), ("n",))

    class NoIdentifiers:
        def find(self, items: Any) -> dict[str, str]:
            return {}

    ctx = CheckContext(NoIdentifiers(), lambda rid: record if rid == real.release_id else None,
                       lambda: [record])
    rows = tuple(tuple(r) for r in fake.rows)
    stripped = fake.release_id[len(dummy.DUMMY_PREFIX):]
    for ids in [(real.release_id,), (), (stripped,)]:
        item = FrameItem("t", tuple(fake.columns), rows, ids)
        report = run_checks([item], ctx)
        assert report.result("provenance").outcome == "review", ids
        assert report.outcome != "pass"
    # the real release itself passes provenance (the check is not simply always flagging)
    ok = run_checks([FrameItem("t", tuple(real.columns), tuple(tuple(r) for r in real.rows),
                               (real.release_id,))], ctx)
    assert ok.result("provenance").outcome == "pass"
