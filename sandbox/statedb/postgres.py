"""The PostgreSQL back end: one database shared by any number of service replicas.

Every writing transaction first takes one transaction-scoped advisory lock
(``pg_advisory_xact_lock``): writers run one at a time, as with SQLite's BEGIN
IMMEDIATE, so the audit log's hash chain and Merkle frontier stay a single total order,
and a check-and-charge sees every charge committed before it, on whichever replica.
Reads outside a transaction see the latest committed state. Commits are synchronous
(the server's default), so an answer is returned only after its charge is durable.
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus

from ..errors import ConfigError
from .base import IntegrityError, StateError, describe

# The one writer lock of the state database (an arbitrary 64-bit number: "sandbox\0").
WRITER_LOCK = 0x73616E64626F7800
# Give up on a busy database after this long (SQLite waits 60 s as well); free the
# writer lock of a session that stopped in the middle of a transaction.
SESSION = ("SET lock_timeout = '60s'; SET idle_in_transaction_session_timeout = '300s'; "
           "SET TIME ZONE 'UTC'")
_TYPES = {"REAL": "DOUBLE PRECISION", "BLOB": "BYTEA", "INTEGER": "BIGINT"}
_TYPE_RE = re.compile(r"\b(REAL|BLOB|INTEGER)\b")
_TOKEN_RE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")
_translated: dict[str, str] = {}
T = TypeVar("T")
_names = itertools.count()
_names_lock = threading.Lock()


def translate(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` outside quoted literals and names; every
    literal ``%`` to ``%%`` (psycopg reads them anywhere)."""
    out = _translated.get(sql)
    if out is None:
        def sub(m: re.Match[str]) -> str:
            t = m.group(0)
            return "%s" if t == "?" else t.replace("%", "%%")
        out = _translated[sql] = _TOKEN_RE.sub(sub, sql)
    return out


def _unavailable(location: str, exc: Exception) -> StateError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StateError(f"the state database {describe(location)} did not answer ({first})",
                      "check that the PostgreSQL server is up and reachable, then try again")


class PgConnection:
    """A psycopg connection speaking the state's portable SQL (``base.Connection``)."""

    backend = "postgresql"

    def __init__(self, url: str, *, read_only: bool) -> None:
        self.url, self.read_only = url, read_only
        self._con = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            con = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise _unavailable(self.url, exc) from None
        con.execute(SESSION + ("; SET default_transaction_read_only = on"
                               if self.read_only else ""))
        return con

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, opened again if it was lost (a server restart, a network cut)
        while no transaction was open."""
        if self._con.closed or self._con.broken:
            self._con = self._connect()
        return self._con

    def _run(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except psycopg.errors.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except psycopg.errors.LockNotAvailable:
            raise StateError("the state database is busy (no write for 60 s)",
                             "try again; if it persists look for a stuck process holding "
                             "the state's writer lock (pg_locks)") from None
        except psycopg.OperationalError as exc:
            raise _unavailable(self.url, exc) from None
        except psycopg.DataError as exc:  # e.g. a NUL in text: never a raw driver error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid data"
            raise StateError(f"the state database refused a value ({first})",
                             "the request held a value PostgreSQL cannot store; it was not "
                             "recorded") from None

    def _outside(self, sql: str, params: Sequence[Any] | None) -> psycopg.Cursor[Any]:
        """A statement outside a transaction: on a lost connection, tried once more on a
        new one (nothing was done by the first try)."""
        for attempt in (1, 2):
            con = self._live()
            try:
                return self._run(functools.partial(con.execute, sql, params))
            except StateError:
                if attempt == 2 or not (con.closed or con.broken):
                    raise
        raise AssertionError("unreachable")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if not self.in_transaction:
            return self._outside(translate(sql), tuple(params))
        return self._run(functools.partial(self._con.execute, translate(sql), tuple(params)))

    def execute_batch(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Statements whose results are not needed, sent in one round trip (psycopg's
        pipeline mode) inside the caller's transaction; an error is raised here."""
        def run() -> None:
            with self._con.pipeline():
                for sql, params in statements:
                    self._con.execute(translate(sql), tuple(params))
        self._run(run)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        cur = self._con.cursor()
        self._run(lambda: cur.executemany(translate(sql), [tuple(r) for r in rows]))

    @property
    def in_transaction(self) -> bool:
        return (not self._con.closed
                and self._con.info.transaction_status != TransactionStatus.IDLE)

    def begin_write(self) -> None:
        if self.read_only:
            raise StateError("this state database was opened read-only",
                             "write on the machine that holds the key store")
        try:
            self._outside(f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})", None)
        except BaseException:
            if self.in_transaction:
                self.rollback()
            raise

    def begin_read(self) -> None:
        self._outside("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", None)

    def commit(self) -> None:
        try:
            self._con.execute("COMMIT")
        except psycopg.Error as exc:
            self.rollback()
            raise StateError(f"the state could not be saved ({str(exc).strip()}); nothing "
                             "was recorded", "check the PostgreSQL server, then try again") \
                from None

    def rollback(self) -> None:
        if self._con.closed or self._con.broken:
            return  # the server ended the transaction with the session
        try:
            self._con.execute("ROLLBACK")
        except psycopg.Error:
            self._con.close()  # a clean session is opened with the next transaction

    def close(self) -> None:
        self._con.close()

    def stream(self, sql: str, params: Sequence[Any] = (), batch: int = 10_000
               ) -> Iterator[Any]:
        """A server-side cursor, so a large log is never held in memory at once."""
        own = not self.in_transaction
        if own:
            self.begin_read()
        with _names_lock:
            name = f"sandbox_stream_{next(_names)}"
        try:
            with self._con.cursor(name=name) as cur:
                self._run(lambda: cur.execute(translate(sql), tuple(params)))
                while rows := self._run(lambda: cur.fetchmany(batch)):
                    yield from rows
        finally:
            if own and self.in_transaction:
                self.rollback()  # read only: nothing to keep

    def raw_text(self, column: str) -> str:
        return column  # PostgreSQL text is always valid UTF-8

    def ddl(self, statement: str) -> str:
        return _TYPE_RE.sub(lambda m: _TYPES[m.group(1)], statement)

    def columns(self, table: str) -> set[str]:
        return {r[0] for r in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE "
            "table_schema = current_schema() AND table_name = ?", (table,))}

    def schema_version(self) -> int:
        """Kept in the table ``state_schema`` (0 before it exists)."""
        row = self.execute("SELECT to_regclass('state_schema') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return 0
        row = self.execute("SELECT version FROM state_schema WHERE id = 1").fetchone()
        return 0 if row is None else int(row[0])

    def set_schema_version(self, version: int) -> None:
        self.execute("CREATE TABLE IF NOT EXISTS state_schema (id INTEGER PRIMARY KEY "
                     "CHECK (id = 1), version BIGINT NOT NULL)")
        self.execute("INSERT INTO state_schema VALUES (1, ?) ON CONFLICT (id) DO UPDATE "
                     "SET version = excluded.version", (int(version),))


def connect(url: str, *, read_only: bool,
            prepare: Callable[[PgConnection], None]) -> PgConnection:
    """Connect and ``prepare`` (migrations, a first read), or fail with a clear error."""
    con = PgConnection(url, read_only=read_only)
    try:
        prepare(con)
    except psycopg.errors.InsufficientPrivilege as exc:
        con.close()
        raise ConfigError(f"the state database {describe(url)} refused the sandbox's user "
                          f"({str(exc).strip()})", "grant it CREATE and all privileges on the "
                          "database's schema (docs/deployment.md)") from None
    except BaseException:
        con.close()
        raise
    return con
