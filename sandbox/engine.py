"""The query engine: decrypted analytic columns in a compressed in-memory DuckDB.

The engine is the only place decrypted data lives. It is locked down before
anyone can send it SQL: no file system, no extensions, no setting changes, no
spilling to disk, no Python object scans. As a last line behind the policy
gate it executes exactly one SELECT statement per call, and never passes the
engine's own error text on.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from .catalog import Catalog, DatasetVersion
from .errors import EngineError, IntegrityError, SandboxError
from .fsutil import sha256_file
from .keys import Kms
from .vault import open_encrypted, read_batches

log = logging.getLogger(__name__)
DB = "vault"
SHADOW = "shadow"  # the same tables, empty: generated SQL is bound here before it is charged
RANK = "__sandbox_rank"  # random rank of a row within its privacy unit (see sql.rewrite)

# Applied in this order: each later setting may forbid changing the earlier ones.
LOCKDOWN = (
    "SET enable_external_access=false",
    "SET autoinstall_known_extensions=false",
    "SET autoload_known_extensions=false",
    "SET allow_community_extensions=false",
    "SET allow_persistent_secrets=false",
    "SET python_enable_replacements=false",
    "SET disabled_filesystems='LocalFileSystem'",
    # A division by zero must not fail the query: an error that depends on one row's
    # value is a signal. x / 0 gives inf (then clamped), x % 0 gives NULL.
    "SET error_on_division_by_zero=false",
)


@dataclass(frozen=True)
class EngineTable:
    name: str
    dataset: str
    version: int
    rows: int
    columns: tuple[tuple[str, str], ...]  # (column, DuckDB type)


def _numeric(duck_type: str) -> bool:
    return duck_type.split("(")[0] in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                                       "FLOAT", "DOUBLE", "DECIMAL", "UTINYINT", "USMALLINT",
                                       "UINTEGER", "UBIGINT")


def table_name(dataset: str, version: int) -> str:
    """The engine table holding one dataset version (policies refer to it this way)."""
    return f"{dataset}_v{version}"


class Engine:
    """Load tables, then ``lock()``; after that only ``execute`` of single SELECTs."""

    def __init__(self, memory_limit: str = "4GB", threads: int = 2) -> None:
        self._con = duckdb.connect(":memory:", config={
            "threads": threads, "memory_limit": memory_limit, "temp_directory": ""})
        for stmt in LOCKDOWN:
            self._con.execute(stmt)
        self._con.execute(f"ATTACH ':memory:' AS {DB} (COMPRESS)")
        self._con.execute(f"ATTACH ':memory:' AS {SHADOW}")
        self._bound: dict[str, pa.Schema] = {}  # SQL -> result schema (bind cache)
        self._bound_lock = threading.Lock()
        self._locked = False
        self._extending = False  # set by load_more only, under _load_lock
        self._load_lock = threading.Lock()
        self.tables: dict[str, EngineTable] = {}
        self._ranges: dict[tuple[str, str], tuple[float, float]] = {}
        # A second database that never holds data: post-processing of noisy results.
        self._post = duckdb.connect(":memory:", config={"threads": 1, "memory_limit": "256MB",
                                                         "temp_directory": ""})
        for stmt in LOCKDOWN:
            self._post.execute(stmt)
        self._post.execute("SET lock_configuration=true")

    # -- loading (before lock) -------------------------------------------------
    def load_arrow(self, name: str, schema: pa.Schema, batches: Iterable[pa.Table],
                   dataset: str = "", version: int = 0,
                   privacy_unit: str | None = None) -> EngineTable:
        if self._locked and not self._extending:
            raise EngineError("the engine is locked; tables can only be loaded before lock()")
        if not name.isidentifier() or name in self.tables:
            raise EngineError(f"invalid or duplicate engine table name {name!r}")

        failures: list[Exception] = []

        def stream() -> Iterator[pa.RecordBatch]:
            try:
                for t in batches:
                    yield from t.cast(schema).to_batches()
            except Exception as exc:  # DuckDB would replace it with its own error text
                failures.append(exc)
                raise

        reader = pa.RecordBatchReader.from_batches(schema, stream())
        self._con.register("_sandbox_load", reader)
        try:
            self._con.execute(f'CREATE TABLE {DB}.main."{name}" AS SELECT * FROM _sandbox_load')
            if privacy_unit is not None:
                self._rank(name, privacy_unit)
        except duckdb.Error as exc:
            if failures and isinstance(failures[0], SandboxError):
                raise failures[0] from None
            log.warning("engine load error (not shown to users): %s", exc)
            raise EngineError(f"table {name!r} could not be loaded",
                              "the failure was logged for operators") from None
        finally:
            self._con.unregister("_sandbox_load")
        self._con.execute(f'CREATE TABLE {SHADOW}.main."{name}" AS SELECT * FROM '
                          f'{DB}.main."{name}" LIMIT 0')
        (rows,) = self._con.execute(f'SELECT count(*) FROM {DB}.main."{name}"').fetchone()
        cols = tuple((c[0], str(c[1])) for c in self._con.execute(
            f'DESCRIBE {DB}.main."{name}"').fetchall() if c[0] != RANK)
        table = EngineTable(name, dataset, version, rows, cols)
        self.tables[name] = table
        self._measure_ranges(name, [c for c, t in cols if _numeric(t)]
                             + ([RANK] if privacy_unit is not None else []))
        return table

    def _rank(self, name: str, unit: str) -> None:
        """Give each row a random rank within its privacy unit, once, at load.

        The gate bounds each unit's rows with a cheap ``rank <= k`` filter instead of a
        per-query window. When no unit has more than one row the rank is 1 everywhere and
        no sort is needed.
        """
        table = f'{DB}.main."{name}"'
        (most,) = self._con.execute(f'SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n '
                                    f'FROM {table} GROUP BY "{unit}")').fetchone()
        if most <= 1:
            self._con.execute(f"ALTER TABLE {table} ADD COLUMN {RANK} INTEGER DEFAULT 1")
            return
        ranked = f'{DB}.main."__ranked_{name}"'
        self._con.execute(
            f'CREATE TABLE {ranked} AS SELECT * EXCLUDE (__r), row_number() OVER (PARTITION BY '
            f'"{unit}" ORDER BY __r) AS {RANK} FROM (SELECT *, random() AS __r FROM {table}) '
            f"ORDER BY {RANK}")  # stored in rank order: the gate's rank filter becomes free
        self._con.execute(f"DROP TABLE {table}")
        self._con.execute(f'ALTER TABLE {ranked} RENAME TO "{name}"')

    def load_dataset(self, catalog: Catalog, kms: Kms, dv: DatasetVersion,
                     name: str | None = None) -> EngineTable:
        """Decrypt only the analytic columns (identifier keys are never unwrapped)."""
        columns = dv.spec.analytic_columns
        schema = dv.spec.arrow_schema(columns)
        base = catalog.storage_dir(dv.name, dv.storage_id)

        def batches() -> Iterator[pa.Table]:
            for f in dv.files:
                ref = dv.file_ref(f)
                path = base / f.file_name
                # Authenticate the whole file first: decryption checks only the pages it reads,
                # not the identifier columns or the leading magic bytes.
                if path.exists() and (path.stat().st_size != f.size
                                      or sha256_file(path) != f.sha256):
                    raise IntegrityError(
                        f"{ref.describe()} does not match its catalog record (SHA-256 differs)",
                        "run `sandbox dataset verify`; restore the file from a backup or "
                        "ingest the dataset again")
                pf = open_encrypted(path, ref, list(f.keys), kms)
                yield from read_batches(pf, ref, columns)

        return self.load_arrow(name or table_name(dv.name, dv.version), schema, batches(),
                               dv.name, dv.version, dv.spec.privacy_unit)

    def lock(self) -> None:
        """Compress the loaded data and freeze every setting."""
        self._con.execute(f"CHECKPOINT {DB}")
        self._con.execute(f"USE {DB}")
        self._con.execute("SET lock_configuration=true")
        self._locked = True

    @classmethod
    def from_catalog(cls, catalog: Catalog, kms: Kms,
                     datasets: Iterable[tuple[str, int | None]],
                     memory_limit: str = "4GB", threads: int = 2) -> Engine:
        """Load each ``(dataset, version or None for latest)`` once, then lock."""
        engine = cls(memory_limit=memory_limit, threads=threads)
        for dataset, version in datasets:
            dv = catalog.get(dataset, version)
            if table_name(dv.name, dv.version) not in engine.tables:
                engine.load_dataset(catalog, kms, dv)
        engine.lock()
        return engine

    @classmethod
    def from_arrow(cls, tables: Iterable[tuple[str, pa.Table, str | None]],
                   memory_limit: str = "256MB", threads: int = 1) -> Engine:
        """A locked engine over in-memory Arrow tables ``(name, table, privacy unit)``: the
        dummy data of a scenario (``sandbox.dummy``). It never sees a catalog or a key, so
        its column ranges, uniqueness and answers are those of the tables given."""
        engine = cls(memory_limit=memory_limit, threads=threads)
        for name, table, unit in tables:
            engine.load_arrow(name, table.schema, [table], privacy_unit=unit)
        engine.lock()
        return engine

    def load_more(self, catalog: Catalog, kms: Kms,
                  datasets: Iterable[tuple[str, int]]) -> list[str]:
        """Load dataset versions a newly provisioned workspace needs into the locked engine
        (queries keep running meanwhile; settings stay locked). Returns the tables loaded."""
        loaded: list[str] = []
        with self._load_lock:
            for dataset, version in datasets:
                if table_name(dataset, version) in self.tables:
                    continue
                self._extending = True
                try:
                    self.load_dataset(catalog, kms, catalog.get(dataset, version))
                finally:
                    self._extending = False
                loaded.append(table_name(dataset, version))
            if loaded:
                self._con.execute(f"CHECKPOINT {DB}")
        return loaded

    def _measure_ranges(self, name: str, columns: list[str]) -> None:
        """Min and max of numeric columns, so the gate can leave out clamps and row bounds
        that cannot change any value (the released result is the same either way)."""
        if not columns:
            return
        parts = ", ".join(f'min("{c}"), max("{c}")' for c in columns)
        row = self._con.execute(f'SELECT {parts} FROM {DB}.main."{name}"').fetchall()[0]
        for i, c in enumerate(columns):
            lo, hi = row[2 * i], row[2 * i + 1]
            if lo is not None and hi is not None:
                self._ranges[(name, c)] = (float(lo), float(hi))

    def column_range(self, table: str, column: str) -> tuple[float, float] | None:
        """(min, max) of a numeric column over all rows; None if unknown or NaN-bearing."""
        r = self._ranges.get((table, column))
        if r is None or r[0] != r[0] or r[1] != r[1]:
            return None
        return r

    # -- querying (after lock) -------------------------------------------------
    def most_rows_per_unit(self, table: str) -> int | None:
        """The most rows one privacy unit has in ``table`` (the largest rank given at load);
        for operators' policy review. None for a table without a unit."""
        r = self._ranges.get((table, RANK))
        return None if r is None else int(r[1])

    def is_unique(self, table: str, column: str) -> bool:
        """Whether ``column`` is a key of ``table`` (lookup joins must not multiply rows)."""
        if table not in self.tables or column not in dict(self.tables[table].columns):
            return False
        cur = self._con.cursor()
        try:
            (ok,) = cur.execute(f'SELECT count(*) = count(DISTINCT "{column}") FROM '
                                f'{DB}.main."{table}"').fetchone()
        finally:
            cur.close()
        return bool(ok)

    def postprocess(self, sql: str, table: pa.Table) -> pa.Table:
        """Run gate-generated SQL over noisy values only (``__noisy``), never over data."""
        cursor = self._post.cursor()
        try:
            cursor.register("__noisy", table)
            return cursor.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            log.warning("post-processing error (not shown to users): %s", exc)
            raise EngineError("the noisy result could not be post-processed",
                              "simplify the arithmetic over aggregates") from None
        finally:
            cursor.close()

    def bind(self, sql: str) -> pa.Schema:
        """Run one SELECT on empty copies of the tables: binder and type errors, and errors
        in constant expressions, surface here without reading any data. Returns the result
        schema; cached per SQL text."""
        with self._bound_lock:
            schema = self._bound.get(sql)
        if schema is None:
            schema = self._run(sql, SHADOW, None, None).schema
            with self._bound_lock:
                if len(self._bound) > 4096:
                    self._bound.clear()
                self._bound[sql] = schema
        return schema

    def execute(self, sql: str, params: list[object] | None = None,
                timeout_s: float | None = None) -> pa.Table:
        """Run one SELECT; engine messages are logged, never returned."""
        return self._run(sql, DB, params, timeout_s)

    def _run(self, sql: str, db: str, params: list[object] | None,
             timeout_s: float | None) -> pa.Table:
        if not self._locked:
            raise EngineError("the engine must be locked before it answers queries")
        cursor = self._con.cursor()
        try:
            statements = cursor.extract_statements(sql)
        except duckdb.Error:
            cursor.close()
            raise EngineError("the query could not be prepared") from None
        # DuckDB types SUMMARIZE, DESCRIBE and SHOW as SELECT too: require the text to be
        # a plain query as well.
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT or \
                not re.match(r"\s*(SELECT|WITH)\b", sql, re.IGNORECASE):
            cursor.close()
            raise EngineError("the engine runs exactly one SELECT statement")
        cursor.execute(f"USE {db}")
        timer = None
        timed_out = threading.Event()
        if timeout_s is not None:
            def stop() -> None:
                timed_out.set()
                cursor.interrupt()
            timer = threading.Timer(timeout_s, stop)
            timer.start()
        try:
            return cursor.sql(sql, params=params or None).to_arrow_table()
        except duckdb.Error as exc:
            if timed_out.is_set():
                raise EngineError("the query ran past its time limit and was stopped",
                                  "ask a narrower question or try again later") from None
            log.warning("engine error (not shown to users): %s", exc)
            raise EngineError("the query failed during execution",
                              "rephrase the query; the failure was logged for operators") from None
        finally:
            if timer is not None:
                timer.cancel()
            cursor.close()
