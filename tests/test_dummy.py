"""Dummy data: the generator (schema, values from public facts only, no real value), the
gate on a dummy engine (same refusals and shape, no budget, audit records) and the export
airlock's refusal of dummy results."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from gatekit import policy
from sandbox.dp import Cost
from sandbox.dummy import DummyLedger, answer, dummy_tables, is_dummy_release
from sandbox.engine import Engine
from sandbox.exports import ExportDummyError, FrameItem, item_from_dict
from sandbox.gate import Gate
from sandbox.ledger import InMemoryLedger, SqliteLedger
from sandbox.spec import ARROW_TYPES
from sandbox.sql.refusal import Refusal
from sandbox.state import State

POLICIES = ("credit_underwriting", "population_livelihood")
ANSWERED = [
    "SELECT district, count(*) AS n, avg(income) AS avg_income FROM persons GROUP BY district",
    "SELECT status, purpose, count(*) FROM loans GROUP BY 1, 2",
    "SELECT p.district, count(*) AS loans, count(DISTINCT p.person_id) AS people "
    "FROM persons p JOIN loans l ON p.person_id = l.person_id GROUP BY p.district",
    "SELECT d.name_zh, count(*) FROM persons p JOIN districts d ON p.district = d.district "
    "GROUP BY d.name_zh",
    "SELECT median(income) AS p50, quantile_cont(income, 0.9) AS p90 FROM persons",
    "SELECT count(*) FROM persons p LEFT JOIN loans l ON p.person_id = l.person_id "
    "WHERE l.status IS NULL",
    "SELECT count(*) FROM loans WHERE year(issued_on) = 2020 AND amount > 100000",
    "SELECT education, count(*) AS people FROM persons GROUP BY education",
]
REFUSED = [
    "SELECT max(income) FROM persons",
    "SELECT name, income FROM persons",
    "SELECT * FROM persons",
    "SELECT count(*) FROM persons_v1",
    "SELECT age, count(*) FROM persons GROUP BY age",
    "SELECT count(*) FROM persons WHERE year(income) > 2000",  # refused when bound (engine)
    "SELECT count(*) FROM loans WHERE person_id = 'P0000001'",
    "SELECT sum(area_km2) FROM districts",
]


@pytest.fixture(scope="module")
def credit(tiny_vault: Any) -> Any:
    return policy(tiny_vault.catalog, "credit_underwriting")


@pytest.fixture(scope="module")
def dummy_engine(credit: Any) -> Engine:
    return Engine.from_arrow([(t.engine_table, t.table, t.privacy_unit)
                              for t in dummy_tables(credit)])


# -- the generator ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", POLICIES)
def test_schema_is_exactly_the_exposed_columns_and_types(tiny_vault: Any, name: str) -> None:
    pol = policy(tiny_vault.catalog, name)
    tables = {t.engine_table: t for t in dummy_tables(pol)}
    assert set(tables) == {t.engine_table for t in pol.tables.values()}
    for t in pol.tables.values():
        dummy = tables[t.engine_table]
        assert dummy.table.schema == pa.schema(
            [pa.field(c.name, ARROW_TYPES[c.type]) for c in t.columns.values()])
        assert dummy.privacy_unit == (None if t.public else t.privacy_unit)
        assert dummy.table.num_rows > 0


@pytest.mark.parametrize("name", POLICIES)
def test_values_come_from_keys_bounds_and_types_only(tiny_vault: Any, name: str) -> None:
    pol = policy(tiny_vault.catalog, name)
    tables = {t.engine_table: t.table for t in dummy_tables(pol)}
    for t in pol.tables.values():
        table = tables[t.engine_table]
        for c in t.columns.values():
            values = table.column(c.name).to_pylist()
            assert None not in values
            if c.keys:
                assert set(values) <= set(c.keys), (t.alias, c.name)
            if c.bounds:
                assert c.bounds[0] <= min(values) and max(values) <= c.bounds[1]
        if t.privacy_unit is not None:  # a few rows per unit, never above the bound
            units = table.column(t.privacy_unit).to_pylist()
            assert max(units.count(u) for u in set(units[:200])) <= t.max_rows_per_unit
            assert all(str(u).startswith("U") for u in units)


def test_joins_find_their_rows(credit: Any) -> None:
    tables = {t.engine_table: t.table for t in dummy_tables(credit)}
    persons = set(tables["persons_v1"].column("person_id").to_pylist())
    borrowers = set(tables["loans_v1"].column("person_id").to_pylist())
    assert borrowers < persons  # unit joins match; some persons have no loan
    lookup = tables["districts_v1"].column("district").to_pylist()
    assert sorted(lookup) == sorted(credit.tables["persons"].columns["district"].keys)


def test_no_real_value_or_row_leaks(credit: Any, demo_tables: dict[str, pa.Table]) -> None:
    tables = {t.engine_table: t.table for t in dummy_tables(credit)}
    real_persons, real_districts = demo_tables["persons"], demo_tables["districts"]
    dummy_persons = tables["persons_v1"]
    # no real unit, and no real person (all exposed values alike) appears
    assert not set(dummy_persons.column("person_id").to_pylist()) & \
        set(real_persons.column("person_id").to_pylist())
    shared = [c for c in dummy_persons.column_names if c != "person_id"]
    real_rows = {tuple(r[c] for c in shared) for r in real_persons.select(shared).to_pylist()}
    assert not real_rows & {tuple(r[c] for c in shared)
                            for r in dummy_persons.select(shared).to_pylist()}
    # the public lookup's real rows (codes, Chinese names, areas) are not used either
    dummy_d = tables["districts_v1"]
    for col in ("district_code", "name_zh", "area_km2"):
        assert not set(dummy_d.column(col).to_pylist()) & \
            set(real_districts.column(col).to_pylist()), col
    assert "思明区" not in str(dummy_d.to_pylist())


def test_deterministic_per_scenario_and_seed(credit: Any) -> None:
    a, b = dummy_tables(credit), dummy_tables(credit)
    assert all(x.table.equals(y.table) for x, y in zip(a, b, strict=True))
    c = dummy_tables(credit, seed=1)
    assert not a[0].table.equals(c[0].table)


def test_published_marginals_shape_the_values_within_keys_and_bounds(credit: Any) -> None:
    from sandbox.dummy import DummyDataError

    keys = credit.tables["persons"].columns["district"].keys
    marginals = {("persons", "district"): [0.0] * (len(keys) - 1) + [5.0],
                 ("persons", "income"): [-3.0, 1.0, 0.0, 0.0],  # noisy: clipped at 0
                 ("loans", "rate"): [1.0, 1.0]}
    tables = {t.engine_table: t.table for t in dummy_tables(credit, marginals=marginals)}
    persons = tables["persons_v1"]
    assert set(persons.column("district").to_pylist()) == {keys[-1]}
    income = persons.column("income").to_pylist()
    assert min(income) >= 500_000 and max(income) <= 1_000_000  # the second quarter only
    assert all(0 <= r <= 0.25 for r in tables["loans_v1"].column("rate").to_pylist())
    with pytest.raises(DummyDataError) as info:
        dummy_tables(credit, marginals={("persons", "gender"): [1.0]})
    assert info.value.code == "dummy.unavailable" and "1 weights for 2 values" in \
        info.value.message


def test_the_engine_ranges_are_those_of_the_dummy_data(credit: Any, dummy_engine: Engine,
                                                        engine: Engine) -> None:
    """The gate's shortcut reads column ranges: from dummy data they are dummy ranges."""
    lo, hi = dummy_engine.column_range("persons_v1", "income")  # type: ignore[misc]
    assert 0 <= lo < hi <= 2_000_000
    assert (lo, hi) != engine.column_range("persons_v1", "income")
    assert dummy_engine.tables["persons_v1"].rows == 2_000


# -- the gate on dummy data --------------------------------------------------------------------
@pytest.mark.parametrize("sql", REFUSED)
def test_the_same_refusal_as_on_real_data(credit: Any, dummy_engine: Engine, engine: Engine,
                                          sql: str) -> None:
    gate = Gate(credit)
    with pytest.raises(Refusal) as real:
        gate.answer(sql, member="m", ledger=InMemoryLedger(10, 1e-5), executor=engine)
    dummy = DummyLedger("ws")
    with pytest.raises(Refusal) as fake:
        answer(gate, sql, member="m", ledger=dummy, executor=dummy_engine)
    assert (fake.value.code, fake.value.message) == (real.value.code, real.value.message)
    assert dummy.records == [{"kind": "query.refused", "member": "m", "sql": sql,
                              "sql_sha256": dummy.records[0]["sql_sha256"],
                              "sql_length": len(sql), "rule": real.value.code,
                              "message": real.value.message, "dummy": True}]


@pytest.mark.parametrize("sql", ANSWERED)
def test_the_same_columns_and_noise_plan_as_on_real_data(credit: Any, dummy_engine: Engine,
                                                          engine: Engine, sql: str) -> None:
    gate = Gate(credit)
    real = gate.answer(sql, member="m", ledger=InMemoryLedger(100, 1e-3), executor=engine)
    fake = answer(gate, sql, member="m", ledger=DummyLedger("ws"), executor=dummy_engine)
    assert fake.columns == real.columns and fake.mechanisms == real.mechanisms
    assert (fake.epsilon, fake.delta) == (real.epsilon, real.delta)
    assert fake.dummy and not real.dummy and is_dummy_release(fake.release_id)
    assert fake.to_dict()["dummy"] is True and real.to_dict()["dummy"] is False
    if real.plan.get("threshold") is None:  # public keys: the same groups, in order
        key = [i for i, c in enumerate(real.columns) if c not in real.mechanisms]
        assert [[r[i] for i in key] for r in fake.rows] == \
            [[r[i] for i in key] for r in real.rows]


def test_no_budget_is_spent_and_the_audit_log_says_dummy(credit: Any, dummy_engine: Engine,
                                                         paths: Any, keystore: Any) -> None:
    paths.ensure_home()
    state = State(paths.state_db, keystore.audit_signing_key())
    try:
        real = SqliteLedger.open(state, "ws", credit.id, credit.budget)
        ledger = DummyLedger("ws", state, real)
        gate = Gate(credit)
        before = real.balance("alice")
        sql = ANSWERED[0]
        first = answer(gate, sql, member="alice", ledger=ledger, executor=dummy_engine,
                       epsilon=0.7)
        again = answer(gate, sql, member="alice", ledger=ledger, executor=dummy_engine,
                       epsilon=0.7)
        assert first.release_id != again.release_id and not again.replayed  # never stored
        with pytest.raises(Refusal):
            answer(gate, REFUSED[0], member="alice", ledger=ledger, executor=dummy_engine)
        assert ledger.balance("alice") == before == real.balance("alice")
        assert state.con.execute("SELECT count(*) FROM charges").fetchone()[0] == 0
        assert state.con.execute("SELECT count(*) FROM releases").fetchone()[0] == 0
        recs = list(state.records(kind="query."))
        assert [r["kind"] for r in recs] == ["query.dummy", "query.dummy", "query.refused"]
        assert recs[0]["release_id"] == first.release_id and recs[0]["rows"] == 6
        assert recs[0]["epsilon"] == 0.0
        assert recs[0]["noise_epsilon"] == pytest.approx(0.7)
        assert recs[0]["sql"] == sql and recs[0]["error_code"] is None
        assert recs[2]["dummy"] is True and recs[2]["rule"] == "gate.aggregate_not_allowed"
        assert state.verify().ok
        # a real refusal is not marked dummy
        real.refused("alice", REFUSED[0], "gate.aggregate_not_allowed", "x")
        assert list(state.records(kind="query.refused"))[-1]["dummy"] is None
    finally:
        state.close()


def test_a_failure_after_the_checks_is_recorded_free(credit: Any, dummy_engine: Engine) -> None:
    class Failing:
        def __getattr__(self, name: str) -> Any:
            return getattr(dummy_engine, name)

        def execute(self, *a: Any, **k: Any) -> pa.Table:
            from sandbox.errors import EngineError
            raise EngineError("stopped")

    ledger = DummyLedger("ws")
    with pytest.raises(Exception, match="stopped"):
        answer(Gate(credit), ANSWERED[1], member="m", ledger=ledger, executor=Failing())
    (rec,) = ledger.records
    assert rec["kind"] == "query.dummy" and rec["error_code"] == "engine.error"
    assert rec["release_id"] is None and rec["epsilon"] == 0.0


def test_dummy_ledger_never_reserves_or_replays() -> None:
    ledger = DummyLedger("ws")
    r = ledger.reserve("m", Cost(1e9, 0.5), sql="x")
    assert (r.epsilon, r.delta) == (0.0, 0.0)
    assert ledger.replay("m", "key") is None
    ledger.cancel(r)
    assert ledger.records == []


# -- the export airlock -----------------------------------------------------------------------
def test_exports_refuse_dummy_releases_and_frames(credit: Any, dummy_engine: Engine) -> None:
    import pandas as pd

    rel = answer(Gate(credit), ANSWERED[0], member="m", ledger=DummyLedger("ws"),
                 executor=dummy_engine).to_dict()
    with pytest.raises(ExportDummyError) as info:
        item_from_dict({"kind": "frame", "name": "t", "columns": rel["columns"],
                        "rows": rel["rows"], "release_ids": [rel["release_id"]]})
    assert info.value.code == "export.dummy" and "for real" in (info.value.hint or "")
    with pytest.raises(ExportDummyError):
        FrameItem("t", ("a",), ((1,),), (rel["release_id"],))
    df = pd.DataFrame(rel["rows"], columns=rel["columns"])
    df.attrs["dummy"] = True
    with pytest.raises(ExportDummyError):
        FrameItem.from_pandas("t", df)
    derived = df[["district"]].copy()  # pandas carries attrs along
    with pytest.raises(ExportDummyError):
        FrameItem.from_pandas("t", derived)


# -- the command line ---------------------------------------------------------------------------
def test_cli_dummy_query_reads_no_vault_file(cli_env: dict[str, str], paths: Any) -> None:
    """`sandbox query --dummy` answers with the vault's files gone: nothing real is read."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("sandbox")
    pol = str(Path(__file__).resolve().parents[1] / "policies" / "credit_underwriting.yaml")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], env=cli_env, capture_output=True, text=True,
                              timeout=300)

    demo = run("demo", "--size", "tiny")
    assert demo.returncode == 0, demo.stderr
    assert "sandbox query --dummy" in demo.stdout and "dummy=True" in demo.stdout
    shutil.rmtree(paths.vault_dir)
    sql = "SELECT district, count(*) AS n FROM persons GROUP BY district"
    out = run("query", "--dummy", "--policy", pol, "--member", "ana", "--format", "json", sql)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["dummy"] is True and body["release_id"].startswith("dummy-")
    assert len(body["rows"]) == 6
    table = run("query", "--dummy", "--policy", pol, "--member", "ana", sql)
    assert "DUMMY DATA" in table.stdout and "epsilon spent 0 " in table.stdout
    assert run("query", "--policy", pol, "--member", "ana", sql).returncode != 0  # real: gone
    log = run("audit", "log", "--kind", "query.", "--format", "jsonl")
    kinds = [json.loads(line)["kind"] for line in log.stdout.splitlines()]
    assert kinds == ["query.dummy", "query.dummy"]  # the real one failed before any charge
