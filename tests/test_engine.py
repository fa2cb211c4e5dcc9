"""The query engine's own defences: lockdown, one SELECT per call, no engine text out.

The SQL policy gate is a separate layer; these tests send SQL straight to the engine
(and to its raw DuckDB connection) to show the engine holds even without the gate.
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sandbox.engine import Engine
from sandbox.errors import EngineError

IDENTIFIERS = {"persons": ["name", "id_number", "phone"], "loans": ["loan_id"]}


def _raw_fails(eng: Engine, sql: str) -> duckdb.Error:
    with pytest.raises(duckdb.Error) as info:
        eng._con.execute(sql).fetchall()
    return info.value


# -- the raw connection after lock() -------------------------------------------------------


@pytest.fixture
def target(tmp_path: pathlib.Path) -> pathlib.Path:
    """A real, readable file: failures below are refusals, not missing files."""
    path = tmp_path / "secret.csv"
    path.write_text("a,b\n1,2\n")
    return path


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM read_csv('{p}')",
        "SELECT * FROM read_csv_auto('{p}')",
        "SELECT * FROM read_text('{p}')",
        "SELECT * FROM read_blob('{p}')",
        "SELECT * FROM read_parquet('{p}')",
        "SELECT * FROM read_json_auto('{p}')",
        "SELECT * FROM '{p}'",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM glob('{d}/*')",
        "SELECT * FROM glob('/etc/*')",
    ],
)
def test_raw_connection_cannot_read_files(
    fresh_engine: Engine, target: pathlib.Path, template: str
) -> None:
    sql = template.format(p=target, d=target.parent)
    err = _raw_fails(fresh_engine, sql)
    assert isinstance(err, duckdb.PermissionException | duckdb.CatalogException), err


def test_raw_connection_cannot_write_files(
    fresh_engine: Engine, tables: dict[str, str], tmp_path: pathlib.Path
) -> None:
    persons = tables["persons"]
    for fmt in ("CSV", "PARQUET", "JSON"):
        out = tmp_path / f"out.{fmt.lower()}"
        _raw_fails(fresh_engine, f"COPY (SELECT * FROM {persons}) TO '{out}' (FORMAT {fmt})")
        _raw_fails(fresh_engine, f"COPY {persons} TO '{out}'")
        assert not out.exists()
    _raw_fails(fresh_engine, f"EXPORT DATABASE '{tmp_path / 'export'}'")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_raw_connection_cannot_attach_files(fresh_engine: Engine, tmp_path: pathlib.Path) -> None:
    db = tmp_path / "other.duckdb"
    duckdb.connect(str(db)).close()  # a real database file exists
    err = _raw_fails(fresh_engine, f"ATTACH '{db}' AS other")
    assert isinstance(err, duckdb.PermissionException)
    _raw_fails(fresh_engine, f"ATTACH '{tmp_path / 'new.duckdb'}' AS fresh")
    assert not (tmp_path / "new.duckdb").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "INSTALL httpfs",
        "LOAD httpfs",
        "INSTALL json",
        "LOAD '/tmp/evil.duckdb_extension'",
        "FORCE INSTALL httpfs",
    ],
)
def test_raw_connection_cannot_install_or_load_extensions(fresh_engine: Engine, sql: str) -> None:
    _raw_fails(fresh_engine, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SET threads=1",
        "SET memory_limit='64GB'",
        "SET enable_external_access=true",
        "SET lock_configuration=false",
        "SET temp_directory='/tmp/spill'",
        "SET disabled_filesystems=''",
        "SET autoload_known_extensions=true",
        "SET python_enable_replacements=true",
        "RESET threads",
        "RESET enable_external_access",
        "PRAGMA threads=1",
        "PRAGMA memory_limit='64GB'",
        "SET GLOBAL threads=1",
        "SET SESSION memory_limit='64GB'",
    ],
)
def test_raw_connection_cannot_change_settings(fresh_engine: Engine, sql: str) -> None:
    before = fresh_engine._con.execute(
        "SELECT name, value FROM duckdb_settings() ORDER BY name"
    ).fetchall()
    err = _raw_fails(fresh_engine, sql)
    assert "locked" in str(err)
    after = fresh_engine._con.execute(
        "SELECT name, value FROM duckdb_settings() ORDER BY name"
    ).fetchall()
    assert after == before


def test_locked_settings_have_the_lockdown_values(fresh_engine: Engine) -> None:
    settings = dict(
        fresh_engine._con.execute("SELECT name, value FROM duckdb_settings()").fetchall()
    )
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["autoinstall_known_extensions"] == "false"
    assert settings["autoload_known_extensions"] == "false"
    assert settings["allow_community_extensions"] == "false"
    assert settings["python_enable_replacements"] == "false"
    assert settings["threads"] == "2"
    assert settings["temp_directory"] == ""


def test_raw_connection_cannot_scan_python_variables(fresh_engine: Engine) -> None:
    secret_rows = pa.table({"ssn": ["110101199003070000"]})  # noqa: F841 - the point
    import pandas as pd

    secret_frame = pd.DataFrame({"ssn": ["110101199003070000"]})  # noqa: F841
    for sql in ("SELECT * FROM secret_rows", "SELECT * FROM secret_frame"):
        err = _raw_fails(fresh_engine, sql)
        assert isinstance(err, duckdb.CatalogException)


def test_loading_is_refused_after_lock(fresh_engine: Engine) -> None:
    table = pa.table({"a": [1]})
    with pytest.raises(EngineError, match="locked"):
        fresh_engine.load_arrow("extra", table.schema, [table])


def test_unlocked_engine_refuses_queries() -> None:
    eng = Engine(memory_limit="256MB", threads=1)
    table = pa.table({"a": [1, 2]})
    eng.load_arrow("t", table.schema, [table])
    with pytest.raises(EngineError, match="must be locked"):
        eng.execute("SELECT count(*) FROM t")
    with pytest.raises(EngineError, match="duplicate"):
        eng.load_arrow("t", table.schema, [table])
    with pytest.raises(EngineError, match="invalid"):
        eng.load_arrow('t"; DROP TABLE t; --', table.schema, [table])
    eng.lock()
    assert eng.execute("SELECT sum(a) AS s FROM t").to_pylist() == [{"s": 2 + 1}]


# -- Engine.execute: exactly one SELECT ---------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; SELECT 2",
        "SELECT count(*) FROM {persons}; DROP TABLE {persons}",
        "CREATE TABLE t AS SELECT * FROM {persons}",
        "CREATE VIEW v AS SELECT 1",
        "CREATE MACRO m(x) AS x",
        "DROP TABLE {persons}",
        "DELETE FROM {persons}",
        "UPDATE {persons} SET income = 0",
        "INSERT INTO {districts} SELECT * FROM {districts}",
        "ATTACH ':memory:' AS scratch",
        "DETACH vault",
        "USE memory",
        "PRAGMA version",
        "PRAGMA database_list",
        "SET threads=1",
        "SET VARIABLE x = 1",
        "RESET threads",
        "CALL pragma_version()",
        "EXPLAIN SELECT 1",
        "COPY {persons} TO '/tmp/x.csv'",
        "INSTALL httpfs",
        "CHECKPOINT",
        "BEGIN TRANSACTION",
        "PREPARE p AS SELECT 1",
        "",
        "   ",
        "-- just a comment",
        "SELEC 1",
        "SUMMARIZE {persons}",
        "DESCRIBE {persons}",
        "SHOW TABLES",
        "FROM {persons}",
    ],
)
def test_execute_refuses_anything_but_one_select(
    fresh_engine: Engine, tables: dict[str, str], sql: str
) -> None:
    with pytest.raises(EngineError) as info:
        fresh_engine.execute(sql.format(**tables))
    assert info.value.code == "engine.error"
    # Nothing changed: the tables are all still there and intact.
    assert fresh_engine.execute(f"SELECT count(*) AS n FROM {tables['persons']}").column(
        "n"
    ).to_pylist() == [2000]
    names = (
        fresh_engine.execute("SELECT table_name FROM information_schema.tables "
                                 "WHERE table_catalog = 'vault' ORDER BY 1")
        .column(0)
        .to_pylist()
    )
    assert names == sorted(tables.values())
    assert fresh_engine.execute("SELECT current_database() AS d").to_pylist() == [{"d": "vault"}]


def test_execute_accepts_single_selects(engine: Engine, tables: dict[str, str]) -> None:
    assert engine.execute("SELECT 1 AS one").to_pylist() == [{"one": 1}]
    assert engine.execute("SELECT 1 AS one;").to_pylist() == [{"one": 1}]
    loans, persons = tables["loans"], tables["persons"]
    assert engine.execute(
        f"WITH c AS (SELECT count(*) AS n FROM {loans}) SELECT n FROM c"
    ).to_pylist() == [{"n": 10250}]
    got = engine.execute(
        f"SELECT count(*) AS n FROM {persons} WHERE age >= ? AND district = ?", [60, "Siming"]
    )
    assert got.column("n")[0].as_py() > 0


# -- identifier columns never reach the engine ----------------------------------------------


def _visible(columns: list[str]) -> list[str]:
    """Columns minus the engine's own bookkeeping columns (``__sandbox...``)."""
    return [c for c in columns if not c.startswith("__sandbox")]


@pytest.mark.parametrize("dataset", sorted(IDENTIFIERS))
def test_identifier_columns_do_not_exist(
    engine: Engine, tables: dict[str, str], tiny_vault, dataset: str
) -> None:
    spec = tiny_vault.versions[dataset].spec
    table = tables[dataset]
    described = [r[0] for r in engine._con.execute(f"DESCRIBE vault.main.{table}").fetchall()]
    assert _visible(described) == spec.analytic_columns
    assert [c for c, _ in engine.tables[table].columns] == spec.analytic_columns
    for col in IDENTIFIERS[dataset]:
        assert col in [c.name for c in spec.columns]
        assert col not in described
        with pytest.raises(EngineError):
            engine.execute(f"SELECT {col} FROM {table}")
        with pytest.raises(EngineError):
            engine.execute(f'SELECT "{col}" FROM {table}')
    raw = engine._con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
    ).fetchall()
    assert set(_visible([r[0] for r in raw])) == set(spec.analytic_columns)


def test_no_identifier_value_is_anywhere_in_the_engine(
    engine: Engine, tables: dict[str, str], demo_tables: dict[str, pa.Table]
) -> None:
    persons = demo_tables["persons"]
    probes = persons.column("id_number").to_pylist()[:5] + persons.column("phone").to_pylist()[:5]
    probes += persons.column("name").to_pylist()[:5]
    probes += demo_tables["loans"].column("loan_id").to_pylist()[:5]
    text = "\n".join(
        row
        for table in tables.values()
        for row in engine.execute(f"SELECT t::VARCHAR AS r FROM {table} t").column("r").to_pylist()
    )
    assert persons.column("person_id")[0].as_py() in text  # the scan sees real rows
    for value in probes:
        assert value not in text


# -- engine errors are not passed through --------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "dataset", "column"),
    [
        ("SELECT CAST(district AS INTEGER) FROM {persons}", "persons", "district"),
        ("SELECT CAST(education AS DATE) FROM {persons}", "persons", "education"),
        ("SELECT strptime(purpose, '%Y') FROM {loans}", "loans", "purpose"),
        ("SELECT CAST(person_id AS BIGINT) FROM {persons}", "persons", "person_id"),
        ("SELECT sum(CAST(status AS DOUBLE)) FROM {loans}", "loans", "status"),
    ],
)
def test_engine_errors_are_not_passed_through(
    engine: Engine,
    tables: dict[str, str],
    demo_tables: dict[str, pa.Table],
    caplog: pytest.LogCaptureFixture,
    sql: str,
    dataset: str,
    column: str,
) -> None:
    values = set(demo_tables[dataset].column(column).unique().to_pylist())
    with (
        caplog.at_level(logging.WARNING, logger="sandbox.engine"),
        pytest.raises(EngineError) as info,
    ):
        engine.execute(sql.format(**tables))
    err = info.value
    shown = str(err) + repr(err.to_dict())
    assert not [v for v in values if v in shown]
    assert err.message == "the query failed during execution"
    assert err.__cause__ is None and err.__suppress_context__
    # DuckDB's own message does quote a raw value: it goes to the operators' log only.
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert [v for v in values if v in logged]


@pytest.mark.parametrize(
    ("sql", "hidden"),
    [
        ("SELECT no_such_column FROM {persons}", "no_such_column"),
        ("SELECT * FROM no_such_table", "no_such_table"),
        ("SELECT 1 +", "syntax"),
        ("SELECT * FROM {persons} WHERE", "syntax"),
    ],
)
def test_binder_and_parser_errors_are_not_passed_through(
    engine: Engine, tables: dict[str, str], sql: str, hidden: str
) -> None:
    with pytest.raises(EngineError) as info:
        engine.execute(sql.format(**tables))
    assert hidden not in str(info.value).lower()
    assert "vault" not in str(info.value) and "Error:" not in str(info.value)
    assert info.value.__cause__ is None


def test_errors_leave_the_engine_usable(engine: Engine, tables: dict[str, str]) -> None:
    with pytest.raises(EngineError):
        engine.execute(f"SELECT CAST(gender AS INTEGER) FROM {tables['persons']}")
    got = engine.execute(f"SELECT count(*) AS n FROM {tables['districts']}")
    assert got.to_pylist() == [{"n": 6}]


# -- timeouts ---------------------------------------------------------------------------------


def test_timeout_interrupts_a_long_query(fresh_engine: Engine, tables: dict[str, str]) -> None:
    loans = tables["loans"]
    outcome: list[BaseException | pa.Table] = []

    def run() -> None:
        try:
            outcome.append(
                fresh_engine.execute(
                    "SELECT count(*), sum(a.amount * b.rate * c.term_months) "
                    f"FROM {loans} a, {loans} b, {loans} c",
                    timeout_s=0.5,
                )
            )
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    elapsed = time.monotonic() - started
    if worker.is_alive():  # the timeout failed: stop the query ourselves, then fail
        fresh_engine._con.interrupt()
        worker.join(10)
        pytest.fail("the engine's timeout did not stop a 10^12-row cross join")
    assert 0.4 <= elapsed < 5, elapsed
    (err,) = outcome
    assert isinstance(err, EngineError), err
    assert err.message == "the query ran past its time limit and was stopped"
    assert err.hint
    # The engine still answers afterwards, and a quick query is not cut short.
    got = fresh_engine.execute(f"SELECT count(*) AS n FROM {loans}", timeout_s=5)
    assert got.to_pylist() == [{"n": 10250}]


# -- what was loaded --------------------------------------------------------------------------


def test_loaded_values_equal_the_source(
    engine: Engine, tables: dict[str, str], demo_tables: dict[str, pa.Table]
) -> None:
    persons, loans = demo_tables["persons"], demo_tables["loans"]
    got = engine.execute(f"SELECT count(*) AS n FROM {tables['persons']}")
    assert got.to_pylist() == [{"n": persons.num_rows}]
    assert engine.tables[tables["loans"]].rows == loans.num_rows

    got = engine.execute(
        "SELECT district, count(*) AS n, sum(income) AS income, min(age) AS lo, "
        f"max(credit_score) AS hi FROM {tables['persons']} GROUP BY district ORDER BY district"
    )
    expected = (
        persons.group_by("district")
        .aggregate([([], "count_all"), ("income", "sum"), ("age", "min"), ("credit_score", "max")])
        .sort_by("district")
    )
    assert got.column("district").to_pylist() == expected.column("district").to_pylist()
    assert got.column("n").to_pylist() == expected.column("count_all").to_pylist()
    assert [int(v) for v in got.column("income").to_pylist()] == expected.column(
        "income_sum"
    ).to_pylist()
    assert got.column("lo").to_pylist() == expected.column("age_min").to_pylist()
    assert got.column("hi").to_pylist() == expected.column("credit_score_max").to_pylist()

    got = engine.execute(
        "SELECT status, count(*) AS n, sum(amount) AS amount, sum(CASE WHEN rate > 0.1 "
        f"THEN 1 ELSE 0 END) AS high, min(issued_on) AS first FROM {tables['loans']} "
        "GROUP BY status ORDER BY status"
    )
    expected = (
        loans.append_column("high", pc.cast(pc.greater(loans.column("rate"), 0.1), pa.int64()))
        .group_by("status")
        .aggregate([([], "count_all"), ("amount", "sum"), ("high", "sum"), ("issued_on", "min")])
        .sort_by("status")
    )
    assert got.column("status").to_pylist() == expected.column("status").to_pylist()
    assert got.column("n").to_pylist() == expected.column("count_all").to_pylist()
    assert [int(v) for v in got.column("amount").to_pylist()] == expected.column(
        "amount_sum"
    ).to_pylist()
    assert [int(v) for v in got.column("high").to_pylist()] == expected.column(
        "high_sum"
    ).to_pylist()
    assert got.column("first").to_pylist() == expected.column("issued_on_min").to_pylist()

    employed = engine.execute(
        f"SELECT count(*) AS n FROM {tables['persons']} WHERE employed"
    ).column("n")
    assert employed.to_pylist() == [pc.sum(persons.column("employed").cast(pa.int64())).as_py()]


def test_districts_are_loaded_exactly(
    engine: Engine, tables: dict[str, str], demo_tables: dict[str, pa.Table]
) -> None:
    cols = ", ".join(demo_tables["districts"].column_names)
    got = engine.execute(f"SELECT {cols} FROM {tables['districts']} ORDER BY district")
    expected = demo_tables["districts"].sort_by("district")
    assert got.to_pylist() == expected.to_pylist()
    assert got.schema.field("area_km2").type == pa.float64()


def test_joins_across_tables_work(
    engine: Engine, tables: dict[str, str], demo_tables: dict[str, pa.Table]
) -> None:
    got = engine.execute(
        f"SELECT count(*) AS n FROM {tables['loans']} l JOIN {tables['persons']} p "
        f"USING (person_id) JOIN {tables['districts']} d ON d.district = p.district"
    )
    assert got.to_pylist() == [{"n": demo_tables["loans"].num_rows}]


def test_temp_directory_is_empty(engine: Engine, fresh_engine: Engine) -> None:
    for eng in (engine, fresh_engine):
        assert eng._con.execute("SELECT current_setting('temp_directory')").fetchone() == ("",)
        assert eng.execute("SELECT current_setting('temp_directory') AS t").to_pylist() == [
            {"t": ""}
        ]
