"""Attack queries: every one is refused before execution and charges nothing.

Think like a developer who can write any SQL: reach files, settings or other
tables; read identifiers or hidden columns; get rows out through any construct;
make the engine fail on a value; or single out one unit. Each entry names the
rule that must refuse it.
"""

from __future__ import annotations

import pytest

from gatekit import SpyExecutor, policy
from sandbox.gate import Gate
from sandbox.ledger import InMemoryLedger
from sandbox.sql.refusal import Refusal

ATTACKS: list[tuple[str, str]] = [
    # -- not a single query -------------------------------------------------------------
    ("", "gate.syntax"),
    ("   ", "gate.syntax"),
    ("SELEC count(*) FROM persons", "gate.syntax"),
    ("SELECT count(*) FROM persons WHERE (", "gate.syntax"),
    ("SELECT count(*) FROM persons WHERE district = '\ud800'", "gate.syntax"),
    ("SELECT count(*) AS \"\udfff\" FROM persons", "gate.syntax"),
    ("SELECT count(*) FROM persons; SELECT count(*) FROM loans", "gate.multiple_statements"),
    ("SELECT count(*) FROM persons; DROP TABLE persons", "gate.multiple_statements"),
    ("DROP TABLE persons", "gate.not_a_query"),
    ("DELETE FROM persons", "gate.not_a_query"),
    ("UPDATE persons SET income = 0", "gate.not_a_query"),
    ("INSERT INTO persons VALUES (1)", "gate.not_a_query"),
    ("CREATE TABLE x AS SELECT * FROM persons", "gate.not_a_query"),
    ("CREATE VIEW v AS SELECT 1", "gate.not_a_query"),
    ("CREATE MACRO m(x) AS x", "gate.not_a_query"),
    ("ALTER TABLE persons ADD COLUMN x INT", "gate.not_a_query"),
    ("ATTACH ':memory:' AS x", "gate.not_a_query"),
    ("ATTACH '/tmp/x.db' AS x", "gate.not_a_query"),
    ("DETACH vault", "gate.not_a_query"),
    ("COPY persons TO '/tmp/p.csv'", "gate.not_a_query"),
    ("COPY (SELECT 1) TO '/tmp/p.csv'", "gate.not_a_query"),
    ("EXPORT DATABASE '/tmp/db'", "gate.syntax"),
    ("INSTALL httpfs", "gate.not_a_query"),
    ("LOAD httpfs", "gate.not_a_query"),
    ("SET threads = 1", "gate.not_a_query"),
    ("SET VARIABLE x = 1", "gate.not_a_query"),
    ("RESET lock_configuration", "gate.not_a_query"),
    ("PRAGMA version", "gate.not_a_query"),
    ("PRAGMA database_list", "gate.not_a_query"),
    ("CALL pragma_version()", "gate.not_a_query"),
    ("EXPLAIN SELECT count(*) FROM persons", "gate.not_a_query"),
    ("DESCRIBE persons", "gate.not_a_query"),
    ("SHOW TABLES", "gate.not_a_query"),
    ("CHECKPOINT", "gate.not_a_query"),
    ("USE memory", "gate.not_a_query"),
    ("PREPARE p AS SELECT 1", "gate.not_a_query"),
    ("CREATE SECRET s (TYPE s3)", "gate.not_a_query"),
    ("BEGIN TRANSACTION", "gate.not_a_query"),
    ("VACUUM", "gate.not_a_query"),
    ("SUMMARIZE persons", "gate.not_a_query"),
    ("SELECT count(*) FROM persons UNION SELECT count(*) FROM loans", "gate.set_operation"),
    ("SELECT count(*) FROM persons EXCEPT SELECT 1", "gate.set_operation"),
    ("SELECT count(*) FROM persons INTERSECT SELECT 1", "gate.set_operation"),
    ("SELECT count(*) FROM persons UNION ALL BY NAME SELECT count(*) FROM loans",
     "gate.set_operation"),
    # -- files, settings, metadata, other tables -------------------------------------------
    ("SELECT count(*) FROM read_csv('/etc/passwd')", "gate.table_function"),
    ("SELECT count(*) FROM read_csv_auto('/etc/passwd')", "gate.table_function"),
    ("SELECT count(*) FROM read_parquet('/tmp/x.parquet')", "gate.table_function"),
    ("SELECT count(*) FROM read_json('/tmp/x.json')", "gate.table_function"),
    ("SELECT count(*) FROM read_text('/etc/hostname')", "gate.table_function"),
    ("SELECT count(*) FROM read_blob('/etc/hostname')", "gate.table_function"),
    ("SELECT count(*) FROM glob('/etc/*')", "gate.table_function"),
    ("SELECT count(*) FROM query('SELECT * FROM persons')", "gate.table_function"),
    ("SELECT count(*) FROM query_table('persons')", "gate.table_function"),
    ("SELECT count(*) FROM duckdb_settings()", "gate.table_function"),
    ("SELECT count(*) FROM duckdb_tables()", "gate.table_function"),
    ("SELECT count(*) FROM duckdb_columns()", "gate.table_function"),
    ("SELECT count(*) FROM duckdb_views()", "gate.table_function"),
    ("SELECT count(*) FROM duckdb_secrets()", "gate.table_function"),
    ("SELECT count(*) FROM pragma_table_info('persons')", "gate.table_function"),
    ("SELECT count(*) FROM range(10)", "gate.table_function"),
    ("SELECT count(*) FROM generate_series(1, 10)", "gate.table_function"),
    ("SELECT count(*) FROM json_execute_serialized_sql('x')", "gate.table_function"),
    ("SELECT count(*) FROM '/etc/passwd'", "gate.unknown_table"),
    ("SELECT count(*) FROM '/tmp/x.parquet'", "gate.unknown_table"),
    ("SELECT count(*) FROM 'persons.csv'", "gate.unknown_table"),
    ("SELECT count(*) FROM information_schema.tables", "gate.unknown_table"),
    ("SELECT count(*) FROM information_schema.columns", "gate.unknown_table"),
    ("SELECT count(*) FROM pg_catalog.pg_class", "gate.unknown_table"),
    ("SELECT count(*) FROM sqlite_master", "gate.unknown_table"),
    ("SELECT count(*) FROM vault.main.persons_v1", "gate.unknown_table"),
    ("SELECT count(*) FROM main.persons", "gate.unknown_table"),
    ("SELECT count(*) FROM persons_v1", "gate.unknown_table"),
    ("SELECT count(*) FROM memory.main.x", "gate.unknown_table"),
    ("SELECT count(*) FROM secrets", "gate.unknown_table"),
    ("SELECT count(*) FROM (VALUES (1), (2)) t(a)", "gate.construct_not_allowed"),
    ("SELECT count(*) FROM persons, LATERAL (SELECT 1)", "gate.join"),
    ("SELECT count(*) FROM persons TABLESAMPLE 10%", "gate.construct_not_allowed"),
    ("SELECT count(*) FROM persons USING SAMPLE 10", "gate.construct_not_allowed"),
    ("SELECT current_setting('temp_directory'), count(*) FROM persons",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE current_setting('threads') = '2'",
     "gate.function_not_allowed"),
    ("SELECT getvariable('x'), count(*) FROM persons", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE version() = 'v2'", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE current_database() = 'vault'",
     "gate.function_not_allowed"),
    # -- identifier and hidden columns --------------------------------------------------------
    ("SELECT count(name) FROM persons", "gate.unknown_column"),
    ("SELECT count(*) FROM persons WHERE name = 'x'", "gate.unknown_column"),
    ("SELECT count(*) FROM persons WHERE id_number LIKE '3502%'", "gate.unknown_column"),
    ("SELECT count(*) FROM persons WHERE phone = '13800000000'", "gate.unknown_column"),
    ("SELECT count(DISTINCT id_number) FROM persons", "gate.unknown_column"),
    ("SELECT length(name), count(*) FROM persons GROUP BY length(name)",
     "gate.unknown_column"),
    ("SELECT count(*) FROM loans WHERE loan_id = 'L000000001'", "gate.unknown_column"),
    ("SELECT count(*) FROM persons p WHERE p.name IS NOT NULL", "gate.unknown_column"),
    ("SELECT count(*) FROM persons WHERE __sandbox_rank = 1", "gate.reserved_name"),
    ("SELECT count(*) FROM persons WHERE nonexistent = 1", "gate.unknown_column"),
    ("SELECT sum(d.population) FROM districts d", "gate.unknown_column"),
    ("WITH x AS (SELECT name FROM persons) SELECT count(*) FROM x", "gate.unknown_column"),
    ("SELECT count(*) FROM (SELECT phone AS p FROM persons) s", "gate.unknown_column"),
    ("SELECT count(*) FROM persons GROUP BY name", "gate.unknown_column"),
    ("SELECT count(*) FROM persons ORDER BY name", "gate.unknown_column"),
    ("SELECT count(*) FROM persons HAVING max(name) > 'a'", "gate.aggregate_not_allowed"),
    # -- row-level output ------------------------------------------------------------------------
    ("SELECT * FROM persons", "gate.star"),
    ("SELECT p.* FROM persons p", "gate.star"),
    ("SELECT * EXCLUDE (income) FROM persons", "gate.star"),
    ("SELECT COLUMNS('inc.*') FROM persons", "gate.function_not_allowed"),
    ("SELECT income FROM persons", "gate.row_level_output"),
    ("SELECT district FROM persons", "gate.row_level_output"),
    ("SELECT district, income FROM persons GROUP BY district", "gate.row_level_output"),
    ("SELECT district, count(*), income FROM persons GROUP BY district",
     "gate.row_level_output"),
    ("SELECT income + count(*) FROM persons", "gate.row_level_output"),
    ("SELECT DISTINCT district FROM persons", "gate.distinct_rows"),
    ("SELECT DISTINCT ON (district) district, income FROM persons", "gate.distinct_rows"),
    ("SELECT income FROM persons ORDER BY income DESC LIMIT 1", "gate.row_level_output"),
    ("SELECT income FROM persons LIMIT 5", "gate.row_level_output"),
    ("SELECT count(*) FROM persons GROUP BY ALL", "gate.group_by"),
    ("SELECT district, count(*) FROM persons GROUP BY ROLLUP (district)", "gate.group_by"),
    ("SELECT district, count(*) FROM persons GROUP BY CUBE (district)", "gate.group_by"),
    ("SELECT count(*) FROM persons GROUP BY GROUPING SETS ((district), ())", "gate.group_by"),
    ("SELECT row_number() OVER () FROM persons", "gate.window"),
    ("SELECT sum(income) OVER (PARTITION BY district) FROM persons", "gate.window"),
    ("SELECT count(*) OVER () FROM persons", "gate.window"),
    ("SELECT count(*) FROM persons QUALIFY income > 1", "gate.window"),
    ("SELECT lag(income) OVER (ORDER BY age), count(*) FROM persons", "gate.window"),
    ("SELECT min(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT max(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT max(age) FROM persons GROUP BY district", "gate.aggregate_not_allowed"),
    ("SELECT first(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT last(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT any_value(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT arg_max(income, age) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT arg_min(age, income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT max_by(income, age) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT string_agg(district, ',') FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT list(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT array_agg(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT mode(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT histogram(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT approx_count_distinct(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT product(income) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT bit_or(age) FROM persons", "gate.aggregate_not_allowed"),
    ("SELECT count(DISTINCT income) FROM persons", "gate.count_distinct"),
    ("SELECT count(DISTINCT district) FROM persons", "gate.count_distinct"),
    ("SELECT sum(DISTINCT income) FROM persons", "gate.distinct_rows"),
    ("SELECT persons FROM persons", "gate.whole_row"),
    ("SELECT t FROM persons t", "gate.whole_row"),
    ("SELECT count(t) FROM persons t", "gate.whole_row"),
    ("SELECT #2 FROM persons", "gate.construct_not_allowed"),
    ("SELECT count(#2) FROM persons", "gate.construct_not_allowed"),
    ("SELECT count(a) FROM persons AS t(a, b)", "gate.column_alias_list"),
    ("SELECT count(*) FROM (SELECT income FROM persons) AS s(x)", "gate.column_alias_list"),
    ("SELECT {'i': income} FROM persons", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE [income][1] > 0", "gate.construct_not_allowed"),
    ("SELECT struct_pack(a := income) FROM persons", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE to_json(district) = '\"x\"'",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE district ->> '$.x' = 'y'",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE regexp_matches(district, '^S')",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE district ~ '^S'", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE list_transform([1], x -> x + income)[1] > 0",
     "gate.construct_not_allowed"),
    ("SELECT count(*) FROM persons WHERE ? = 1", "gate.construct_not_allowed"),
    ("SELECT count(*) FROM persons WHERE $1 = 1", "gate.construct_not_allowed"),
    ("SELECT count(*) FROM persons WHERE hash(district) % 2 = 0", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE md5(district) = 'x'", "gate.function_not_allowed"),
    # -- the privacy unit ----------------------------------------------------------------------
    ("SELECT person_id, count(*) FROM persons GROUP BY person_id", "gate.group_by"),
    ("SELECT count(*) FROM persons WHERE person_id = 'P0000001'", "gate.unit_misuse"),
    ("SELECT count(*) FROM loans WHERE person_id LIKE 'P00000%'", "gate.unit_misuse"),
    ("SELECT length(person_id), count(*) FROM persons GROUP BY length(person_id)",
     "gate.group_by"),
    ("SELECT sum(length(person_id)) FROM persons", "gate.unit_misuse"),
    ("SELECT count(*) FROM persons GROUP BY substr(person_id, 1, 7)", "gate.function_not_allowed"),
    ("SELECT count(*) FROM loans l WHERE l.person_id IN ('P0000001', 'P0000002')",
     "gate.unit_misuse"),
    ("SELECT count(*) FILTER (WHERE person_id = 'P0000001') FROM persons", "gate.unit_misuse"),
    # -- filters, grouping, bounds ----------------------------------------------------------------
    ("SELECT registered_on, count(*) FROM persons GROUP BY registered_on",
     "gate.filter_column"),
    ("SELECT year(registered_on), count(*) FROM persons GROUP BY year(registered_on)",
     "gate.filter_column"),
    ("SELECT income, count(*) FROM persons GROUP BY income", "gate.group_by"),
    ("SELECT age, count(*) FROM persons GROUP BY age", "gate.group_by"),
    ("SELECT l.amount, count(*) FROM loans l GROUP BY l.amount", "gate.group_by"),
    ("SELECT count(*) FROM persons GROUP BY 42", "gate.group_by"),
    ("SELECT sum(count(*)) FROM persons", "gate.row_level_output"),
    ("SELECT count(*) FROM persons WHERE count(*) > 1", "gate.row_level_output"),
    ("SELECT sum(year(registered_on)) FROM persons", "gate.filter_column"),
    ("SELECT sum(income / age) FROM persons", "gate.unbounded_measure"),
    ("SELECT sum(term_months * rate * amount / age) FROM loans l JOIN persons p "
     "ON p.person_id = l.person_id", "gate.unbounded_measure"),
    ("SELECT sum(length(education)) FROM persons", "gate.unbounded_measure"),
    ("SELECT avg(l.issued_on) FROM loans l", "gate.unbounded_measure"),
    ("SELECT quantile_cont(income, age / 100) FROM persons", "gate.quantile_fraction"),
    ("SELECT quantile_cont(income, 1.5) FROM persons", "gate.quantile_fraction"),
    ("SELECT quantile_cont(income, [0.1, 0.9]) FROM persons", "gate.quantile_fraction"),
    ("SELECT quantile_cont(income, 0) FROM persons", "gate.quantile_fraction"),
    ("SELECT percentile_cont(age / 100) WITHIN GROUP (ORDER BY income DESC) FROM persons",
     "gate.construct_not_allowed"),
    # -- joins ------------------------------------------------------------------------------------
    ("SELECT count(*) FROM persons, loans", "gate.join"),
    ("SELECT count(*) FROM persons CROSS JOIN loans", "gate.join"),
    ("SELECT count(*) FROM persons p JOIN loans l ON p.age = l.term_months", "gate.join"),
    ("SELECT count(*) FROM persons p JOIN loans l ON p.person_id = l.person_id OR 1 = 1",
     "gate.join"),
    ("SELECT count(*) FROM persons p JOIN loans l ON p.person_id > l.person_id", "gate.join"),
    ("SELECT count(*) FROM persons p JOIN loans l ON true", "gate.join"),
    ("SELECT count(*) FROM persons a JOIN persons b USING (district)", "gate.join"),
    ("SELECT count(*) FROM loans l JOIN persons p USING (nonexistent)", "gate.join"),
    ("SELECT count(*) FROM persons p NATURAL JOIN loans l", "gate.join"),
    ("SELECT count(*) FROM persons p FULL JOIN loans l ON p.person_id = l.person_id",
     "gate.join"),
    ("SELECT count(*) FROM persons p RIGHT JOIN loans l ON p.person_id = l.person_id",
     "gate.join"),
    ("SELECT count(*) FROM persons p ASOF JOIN loans l ON p.person_id = l.person_id",
     "gate.join"),
    ("SELECT count(*) FROM persons p POSITIONAL JOIN loans l", "gate.join"),
    ("SELECT count(*) FROM persons p SEMI JOIN loans l ON p.person_id = l.person_id",
     "gate.join"),
    ("SELECT count(*) FROM persons p ANTI JOIN loans l ON p.person_id = l.person_id",
     "gate.join"),
    ("SELECT count(*) FROM persons a JOIN persons b ON a.district = b.district", "gate.join"),
    ("SELECT count(*) FROM districts d", "gate.public_only"),
    ("SELECT sum(area_km2) FROM districts", "gate.public_only"),
    ("SELECT count(*) FROM persons a JOIN districts d ON a.district = d.district "
     "JOIN persons b ON b.district = d.district", "gate.join"),
    ("SELECT count(*) FROM loans l JOIN districts d ON l.purpose = d.district", "gate.join"),
    # -- subqueries -------------------------------------------------------------------------------
    ("SELECT count(*) FROM persons WHERE income > (SELECT avg(income) FROM persons)",
     "gate.subquery"),
    ("SELECT count(*) FROM persons WHERE district IN (SELECT district FROM districts)",
     "gate.subquery"),
    ("SELECT count(*) FROM persons p WHERE EXISTS (SELECT 1 FROM loans l WHERE "
     "l.person_id = p.person_id)", "gate.subquery"),
    ("SELECT (SELECT count(*) FROM loans) FROM persons", "gate.subquery"),
    # per-unit pre-aggregation (sql/per_unit.py): only per unit, one row per unit
    ("SELECT avg(t) FROM (SELECT status, sum(amount) AS t FROM loans GROUP BY status) s",
     "gate.subquery"),
    ("SELECT count(*) FROM (SELECT person_id, status, sum(amount) AS t FROM loans "
     "GROUP BY person_id, status) s", "gate.subquery"),
    ("SELECT avg(t) FROM (SELECT person_id, sum(amount) AS t FROM loans GROUP BY person_id "
     "HAVING sum(amount) > 10) s", "gate.subquery"),
    ("SELECT avg(t) FROM (SELECT person_id, amount AS t FROM loans GROUP BY person_id, "
     "amount) s", "gate.subquery"),
    ("SELECT avg(t) FROM (SELECT person_id, max(amount) AS t FROM loans GROUP BY "
     "person_id) s", "gate.aggregate_not_allowed"),
    ("SELECT avg(t) FROM (SELECT person_id, count(DISTINCT status) AS t FROM loans GROUP BY "
     "person_id) s", "gate.count_distinct"),
    ("SELECT avg(t) FROM (SELECT person_id, sum(term_months * amount / rate) AS t FROM loans "
     "GROUP BY person_id) s", "gate.unbounded_measure"),
    ("SELECT t FROM (SELECT person_id, sum(amount) AS t FROM loans GROUP BY person_id) s",
     "gate.group_by"),
    ("SELECT s.person_id, count(*) FROM (SELECT person_id, sum(amount) AS t FROM loans "
     "GROUP BY person_id) s GROUP BY s.person_id", "gate.group_by"),
    ("WITH s AS (SELECT person_id, sum(amount) AS t FROM loans GROUP BY person_id) "
     "SELECT count(*) FROM s a JOIN s b ON a.person_id = b.person_id", "gate.subquery"),
    ("SELECT count(*) FROM (SELECT person_id, sum(amount) AS t FROM loans GROUP BY "
     "person_id) loans", "gate.subquery"),
    ("SELECT count(*) FROM (SELECT person_id, sum(amount) AS t FROM loans GROUP BY person_id) a "
     "JOIN (SELECT person_id, count(*) AS n FROM loans GROUP BY person_id) b "
     "ON a.person_id = b.person_id", "gate.join"),
    ("SELECT count(*) FROM (SELECT income FROM persons ORDER BY income LIMIT 1) s",
     "gate.subquery"),
    ("SELECT count(*) FROM (SELECT income FROM persons LIMIT 10) s", "gate.subquery"),
    ("WITH RECURSIVE r AS (SELECT 1 AS n) SELECT count(*) FROM r", "gate.subquery"),
    ("WITH s AS (SELECT max(income) m FROM persons) SELECT count(*) FROM s",
     "gate.aggregate_not_allowed"),
    ("WITH s AS (SELECT count(*) c FROM persons) SELECT sum(c) FROM s", "gate.subquery"),
    # an aggregating source is folded only when the outer query renames, filters, orders
    ("SELECT n FROM (SELECT count(*) AS n FROM persons GROUP BY district) t WHERE income > 0",
     "gate.row_level_output"),
    ("SELECT t.n FROM (SELECT district, count(*) AS n FROM persons GROUP BY district) t "
     "JOIN persons p ON p.district = t.district", "gate.subquery"),
    ("WITH s AS (SELECT district, count(*) AS n FROM persons GROUP BY district) "
     "SELECT a.n FROM s a JOIN s b ON a.district = b.district", "gate.subquery"),
    # -- functions that can fail on a value ---------------------------------------------------
    ("SELECT count(*) FROM persons WHERE CAST(district AS INTEGER) = 1", "gate.strict_cast"),
    ("SELECT count(*) FROM persons WHERE district::INTEGER = 1", "gate.strict_cast"),
    ("SELECT sum(CAST(income AS SMALLINT)) FROM persons", "gate.strict_cast"),
    ("SELECT count(*) FROM persons WHERE strptime(district, '%Y') IS NULL",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE error(district) IS NULL", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE make_date(age, 13, 40) IS NULL",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE sleep_ms(income) IS NULL", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE random() < 0.5", "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE sqrt(income - 100000) > 1",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE registered_on > now() - INTERVAL 1 DAY",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE registered_on > DATE '2020-01-01' - INTERVAL 1 DAY",
     "gate.construct_not_allowed"),
    ("SELECT count(*) FROM persons WHERE date_part('year', registered_on) = 2020",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE concat(district, gender) = 'x'",
     "gate.function_not_allowed"),
    ("SELECT count(*) FROM persons WHERE district || gender = 'x'",
     "gate.construct_not_allowed"),
    ("SELECT count(*) FROM persons WHERE typeof(income) = 'BIGINT'",
     "gate.function_not_allowed"),
    # -- order, limit, epsilon, size --------------------------------------------------------------
    ("SELECT count(*) FROM persons LIMIT age", "gate.order_limit"),
    ("SELECT count(*) FROM persons LIMIT 1000000000", "gate.order_limit"),
    ("SELECT count(*) FROM persons " + "WHERE " + " AND ".join(["age > 1"] * 3000),
     "gate.too_large"),
    ("SELECT count(*) FROM persons WHERE " + "(" * 200 + "age > 1" + ")" * 200,
     "gate.too_large"),
    ("SELECT count(*) AS __m0 FROM persons", "gate.reserved_name"),
    ("SELECT count(*) FROM persons AS __rel", "gate.reserved_name"),
]


@pytest.fixture(scope="module")
def gate(tiny_vault):  # type: ignore[no-untyped-def]
    return Gate(policy(tiny_vault.catalog))


def test_there_are_enough_attacks() -> None:
    assert len(ATTACKS) >= 150
    assert len({sql for sql, _ in ATTACKS}) == len(ATTACKS)


@pytest.mark.parametrize(("sql", "rule"), ATTACKS, ids=[f"a{i:03d}" for i in range(len(ATTACKS))])
def test_attack_is_refused_before_execution(gate, engine, sql: str, rule: str) -> None:  # type: ignore[no-untyped-def]
    spy = SpyExecutor(engine)
    ledger = InMemoryLedger(10.0, 1e-5)
    with pytest.raises(Refusal) as info:
        gate.answer(sql, member="mallory", ledger=ledger, executor=spy)
    assert info.value.code == rule, info.value.to_dict()
    assert spy.executed == [], "nothing may reach the engine"
    assert ledger.balance("mallory").epsilon_spent == 0.0
    d = info.value.to_dict()
    assert d["message"]
    assert d["hint"], "every refusal says how to rephrase"
    for secret in ("P000000", "3502", "Siming", "138", "__sandbox"):
        if secret not in sql:
            assert secret not in info.value.message


def test_refusal_names_position(gate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as info:
        gate.check("SELECT count(*)\nFROM persons\nWHERE name = 'x'")
    assert info.value.position == (3, 7)
