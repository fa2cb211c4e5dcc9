"""The gate's privacy mechanics on synthetic data with known answers.

Contribution bounding, clamping, noise scale and interval coverage, public keys
that appear with zero rows, and suppression of rare private keys.
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from sandbox.engine import Engine
from sandbox.gate import Gate
from sandbox.ledger import InMemoryLedger
from sandbox.policy import load_policy
from sandbox.spec import ColumnSpec, DatasetSpec
from sandbox.sql.plan import release

SPEC = DatasetSpec("syn", "synthetic", columns=(
    ColumnSpec("uid", "string", "privacy_unit", "general"),
    ColumnSpec("grp", "string", "attribute", "general"),
    ColumnSpec("cat", "string", "attribute", "general"),
    ColumnSpec("v", "int64", "sensitive", "general"),
))
POLICY = """
    policy_version: 1
    id: synthetic
    title: Synthetic test scenario
    tables:
      t:
        dataset: syn
        version: 1
        privacy_unit: uid
        max_rows_per_unit: 3
        columns:
          grp: dimension
          cat: {role: dimension, keys: [a, b, c]}
          v: {role: measure, bounds: [0, 100]}
    privacy: {epsilon_default: 1.0, epsilon_max: 5.0, delta: 1.0e-6,
              max_groups_per_unit: 2, mechanism: laplace}
    budget: {epsilon: 1000, delta: 0.001}
"""


def _table(heavy_rows: int, heavy_value: int = 100) -> pa.Table:
    uids = [f"u{i}" for i in range(300)] + ["heavy"] * heavy_rows
    grps = ["common"] * 300 + ["heavy_group"] * heavy_rows
    cats = ["a" if i % 2 else "b" for i in range(300)] + ["a"] * heavy_rows
    vals = [i % 50 for i in range(300)] + [heavy_value] * heavy_rows
    return pa.table({"uid": uids, "grp": grps, "cat": cats, "v": pa.array(vals, pa.int64())})


def _engine(table: pa.Table) -> Engine:
    eng = Engine(memory_limit="512MB", threads=1)
    eng.load_arrow("syn_v1", SPEC.arrow_schema(), [table], "syn", 1, privacy_unit="uid")
    eng.lock()
    return eng


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Gate:
    path = Path(tmp_path_factory.mktemp("pol")) / "synthetic.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return Gate(load_policy(path, lambda name, version: (SPEC, 1) if name == "syn" else None))


def _exact(gate: Gate, eng: Engine, sql: str) -> list[dict]:
    return eng.execute(gate.check(sql).executed_sql).to_pylist()


@pytest.mark.parametrize("heavy_rows", [1, 10, 5000])
def test_one_unit_moves_exact_bounded_aggregates_by_at_most_its_bound(gate, heavy_rows) -> None:  # type: ignore[no-untyped-def]
    without, with_heavy = _engine(_table(0)), _engine(_table(heavy_rows))
    for sql, bound in [
        ("SELECT count(*) FROM t", 3),  # max_rows_per_unit
        ("SELECT sum(v) FROM t", 3 * 100),  # rows x max |bound|
        ("SELECT count(DISTINCT uid) FROM t", 1),
    ]:
        a = _exact(gate, without, sql)[0]["__m0"] or 0
        b = _exact(gate, with_heavy, sql)[0]["__m0"] or 0
        assert 0 < abs(b - a) <= bound, (sql, a, b)


def test_clamping_holds_at_the_edges(gate) -> None:  # type: ignore[no-untyped-def]
    table = pa.table({"uid": ["x", "y", "z", "w"], "grp": ["g"] * 4, "cat": ["a"] * 4,
                      "v": pa.array([-10**15, 10**15, 100, None], pa.int64())})
    rows = _exact(gate, _engine(table), "SELECT sum(v), count(v) FROM t")[0]
    assert rows["__m0"] == 0 + 100 + 100  # -1e15 -> 0, 1e15 -> 100, NULL skipped
    assert rows["__m1"] == 3


def test_noise_matches_its_scale_and_intervals_cover_the_truth(gate) -> None:  # type: ignore[no-untyped-def]
    q = gate.check("SELECT cat, count(*) AS n, sum(v) AS s FROM t GROUP BY cat", 1.0)
    exact = {"__k0": ["a", "b", "c"], "__m0": [150, 150, 0], "__m1": [3675, 3675, 0]}
    truth = {"__m0": 150, "__m1": 3675}
    draws: dict[str, list[float]] = {"__m0": [], "__m1": []}
    for _ in range(3000):
        noisy = release(q.plan, exact, 3)
        for name in draws:
            draws[name].append(noisy.values[name][0] - truth[name])
    for name, errors in draws.items():
        item = q.plan.item(name)
        b = item.mechanism.scale  # discrete Laplace: mean absolute deviation ~ scale
        mad = statistics.fmean(abs(e) for e in errors)
        assert 0.85 * b < mad < 1.15 * b, (name, mad, b)
        half = item.mechanism.ci_halfwidth(0.95)
        coverage = sum(abs(e) <= half for e in errors) / len(errors)
        assert 0.93 <= coverage <= 0.975, (name, coverage)


def test_public_keys_with_zero_rows_appear(gate) -> None:  # type: ignore[no-untyped-def]
    eng = _engine(_table(0))
    r = gate.answer("SELECT cat, count(*) AS n FROM t WHERE cat = 'a' GROUP BY cat",
                    member="m", ledger=InMemoryLedger(1000, 1e-3), executor=eng)
    assert [row[0] for row in r.rows] == ["a", "b", "c"]  # declared order, zeros included
    assert r.suppressed_groups == 0
    for (_, n), (_, half) in zip(r.rows[1:], r.ci95[1:], strict=True):
        assert abs(n) <= 4 * half  # noise around an exact zero


def test_rare_private_keys_are_suppressed_and_common_ones_released(gate) -> None:  # type: ignore[no-untyped-def]
    q = gate.check("SELECT grp, count(*) FROM t GROUP BY grp", 1.0)
    assert q.plan.threshold is not None
    exact = {"__k0": ["common", "rare"], "__m0": [3000, 1], "__m1": [3000, 1]}
    rare_released = common_released = 0
    for _ in range(2000):
        noisy = release(q.plan, exact, 2)
        rare_released += 1 in noisy.keep
        common_released += 0 in noisy.keep
    assert rare_released == 0
    assert common_released == 2000
    # The number of suppressed groups is released noisily: its mean is about right.
    assert q.plan.group_count is not None
    mean = statistics.fmean(release(q.plan, exact, 2).suppressed for _ in range(400))
    assert 0.2 < mean < 1 + q.plan.group_count.scale  # truth 1, clipped at 0
    assert q.plan.threshold_value is not None and q.plan.threshold_value > 10


def test_a_row_value_cannot_make_an_accepted_query_fail(gate) -> None:  # type: ignore[no-untyped-def]
    table = pa.table({"uid": ["x", "y"], "grp": ["g", "h"], "cat": ["a", "b"],
                      "v": pa.array([0, 9223372036854775807], pa.int64())})
    eng = _engine(table)
    ledger = InMemoryLedger(1000, 1e-3)
    for sql in [
        "SELECT count(*) FROM t WHERE 1 / v > 0",
        "SELECT count(*) FROM t WHERE v % v = 0",
        "SELECT count(*) FROM t WHERE v + 1 > 0",
        "SELECT count(*) FROM t WHERE v * v * v > 0",
        "SELECT count(*) FROM t WHERE -v < 0",
        "SELECT count(*) FROM t WHERE abs(v - 9223372036854775807) >= 0",
        "SELECT sum(LEAST(GREATEST(v * 1000, 0), 100)) FROM t",
        "SELECT avg(CASE WHEN v > 5 THEN 100 ELSE 0 END) FROM t",
        "SELECT count(*) FROM t WHERE TRY_CAST(grp AS INTEGER) IS NULL",
        "SELECT cat, count(*) FROM t GROUP BY cat HAVING count(*) / 0 > 1",
    ]:
        gate.answer(sql, member="m", ledger=ledger, executor=eng)
